"""What the scheduler answers without moving anything: its records (live, or as
snapshots), waits for a change, and the subscriptions to finished runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from hatchet_sdk.contracts.dispatcher_pb2 import WorkflowRunEvent

from mageflow_hatchet_testengine import snapshots
from mageflow_hatchet_testengine.errors import NotFoundError
from mageflow_hatchet_testengine.messages import run_finished_event
from mageflow_hatchet_testengine.state import LogRecord, TaskRun, WorkerRecord, WorkflowRun


class RunSubscriber:
    """One ``SubscribeToWorkflowRuns`` stream: receives a WorkflowRunEvent per finished run."""

    def __init__(self) -> None:
        self.queue: queue.Queue[WorkflowRunEvent | None] = queue.Queue()
        self.run_ids: set[str] = set()


class SchedulerQueries:
    """The read side of :class:`~mageflow_hatchet_testengine.scheduler.Scheduler` (a mixin
    of it, over the records it keeps)."""

    _lock: threading.RLock
    _changed: threading.Condition
    _workers: dict[str, WorkerRecord]
    _runs: dict[str, WorkflowRun]
    _tasks: dict[str, TaskRun]
    _subscribers: dict[str, set[RunSubscriber]]
    _orphan_logs: list[LogRecord]

    def _worker(self, worker_id: str) -> WorkerRecord:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise NotFoundError(f"worker {worker_id} not found")
        return worker

    def _task(self, task_run_id: str) -> TaskRun:
        task = self._tasks.get(task_run_id)
        if task is None:
            raise NotFoundError(f"task run {task_run_id} not found")
        return task

    def subscribe(self, subscriber: RunSubscriber, run_id: str) -> None:
        """Send ``subscriber`` the run's result when it finishes (now, if it has)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and run.done:
                subscriber.queue.put(run_finished_event(run))
                return
            subscriber.run_ids.add(run_id)
            self._subscribers.setdefault(run_id, set()).add(subscriber)

    def drop_subscriber(self, subscriber: RunSubscriber) -> None:
        with self._lock:
            for run_id in subscriber.run_ids:
                subs = self._subscribers.get(run_id)
                if subs is not None:
                    subs.discard(subscriber)
                    if not subs:
                        del self._subscribers[run_id]
            subscriber.run_ids.clear()

    def get_run(self, run_id: str) -> WorkflowRun:
        """The live run record; only read it while holding :attr:`lock`."""
        run = self._runs.get(run_id)
        if run is None:
            raise NotFoundError(f"workflow run {run_id} not found")
        return run

    def find_worker(self, worker_id: str) -> WorkerRecord:
        """The live worker record; only read it while holding :attr:`lock`."""
        return self._worker(worker_id)

    def find_task(self, task_run_id: str) -> TaskRun:
        """The live task run record; only read it while holding :attr:`lock`."""
        return self._task(task_run_id)

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def runs(self) -> list[snapshots.RunInfo]:
        with self._lock:
            return [snapshots.run_info(r) for r in self._runs.values()]

    def run(self, run_id: str) -> snapshots.RunInfo:
        with self._lock:
            return snapshots.run_info(self.get_run(run_id))

    def workers(self) -> list[snapshots.WorkerInfo]:
        with self._lock:
            return [snapshots.worker_info(w) for w in self._workers.values()]

    def logs(self, task_run_id: str | None = None) -> list[snapshots.LogLine]:
        with self._lock:
            records: list[LogRecord] = list(self._orphan_logs)
            for task in self._tasks.values():
                records.extend(task.logs)
            if task_run_id is not None:
                records = [r for r in records if r.task_run_id == task_run_id]
            records.sort(key=lambda r: r.created_at)
            return [snapshots.log_line(r) for r in records]

    def _notify(self) -> None:
        self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (evaluated under the lock) is true, or time out."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)
