"""Workers: registration, their ``ListenV2`` action streams, heartbeats, pause, labels,
and the loss of a worker.

A worker whose heartbeats stop (or that unsubscribes) loses its in-flight task runs: they
are re-queued with the same ``retry_count`` (a reassignment, not a retry), up to
``max_reassigns`` times, through the run lifecycle this class builds on. A closed action
stream alone only stops new assignments; actions not sent on it wait for the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from mageflow_hatchet_testengine.run_lifecycle import RunLifecycle
from mageflow_hatchet_testengine.state import ActionStream, WorkerRecord, now_wall


class WorkerRegistry(RunLifecycle):
    """The worker records and their streams; a lost worker's task runs are reassigned."""

    def register_worker(
        self, name: str, actions: Iterable[str], slots: int, labels: dict[str, str | int]
    ) -> WorkerRecord:
        with self._lock:
            worker = WorkerRecord(
                worker_id=str(uuid.uuid4()),
                name=name,
                actions=frozenset(actions),
                slots=slots,
                labels=labels,
                registered_at=now_wall(),
                last_heartbeat=self._clock(),
            )
            self._workers[worker.worker_id] = worker
            self._notify()
            return worker

    def open_stream(self, worker_id: str) -> ActionStream:
        """A ``ListenV2`` stream opened: it replaces any previous one of this worker."""
        with self._lock:
            worker = self._worker(worker_id)
            stream = ActionStream()
            old = worker.stream
            if old is not None:
                stream_items = old.drain()
                old.closed = True
                old.queue.put(None)
                worker.pending.extendleft(reversed(stream_items))
            while worker.pending:
                stream.queue.put(worker.pending.popleft())
            worker.stream = stream
            worker.gone = False
            worker.last_heartbeat = self._clock()
            self._assign()
            self._notify()
            return stream

    def close_stream(self, worker_id: str, stream: ActionStream) -> None:
        """A ``ListenV2`` stream ended; actions not sent on it wait for the next stream."""
        with self._lock:
            worker = self._workers.get(worker_id)
            stream.closed = True
            if worker is None or worker.stream is not stream:
                return
            worker.stream = None
            worker.pending.extendleft(reversed(stream.drain()))
            self._notify()

    def heartbeat(self, worker_id: str) -> None:
        with self._lock:
            worker = self._worker(worker_id)
            worker.last_heartbeat = self._clock()
            if worker.gone and worker.stream is not None:
                worker.gone = False
                self._assign()
            self._notify()

    def unsubscribe(self, worker_id: str) -> None:
        with self._lock:
            self._worker_lost(self._worker(worker_id), "worker unsubscribed")
            self._notify()

    def set_paused(self, worker_id: str, paused: bool) -> WorkerRecord:
        with self._lock:
            worker = self._worker(worker_id)
            worker.paused = paused
            if not paused:
                self._assign()
            self._notify()
            return worker

    def upsert_labels(self, worker_id: str, labels: dict[str, str | int]) -> None:
        with self._lock:
            self._worker(worker_id).labels.update(labels)
            self._notify()

    def _worker_lost(self, worker: WorkerRecord, reason: str) -> None:
        if worker.gone:
            return
        worker.gone = True
        worker.pending.clear()
        if worker.stream is not None:
            worker.stream.drain()
        for task in list(worker.running.values()):
            self._release(task)
            attempt = task.current_attempt()
            if attempt is not None:
                attempt.outcome = "REASSIGNED"
                attempt.finished_at = now_wall()
                attempt.error = reason
            task.reassign_count += 1
            if task.reassign_count > self.max_reassigns:
                self._finish_failed(
                    task, f"REASSIGN_LIMIT: {reason}; reassigned {task.reassign_count - 1} times"
                )
            else:
                self._event(task, "REASSIGNED", reason, worker_id=worker.worker_id)
                self._enqueue(task, delay=0.0)
        self._assign()
