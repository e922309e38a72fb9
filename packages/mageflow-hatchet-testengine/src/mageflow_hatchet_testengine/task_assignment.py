"""The queue of task runs and their assignment to worker slots.

Queued task runs are assigned highest priority first, then first-in first-out, to a
worker that registered the task's action, has an open ``ListenV2`` stream, is not paused
and has enough free slots (the least loaded one). A worker never holds more slots than it
registered. Actions go on the worker's stream, or wait in its pending queue until one opens.
"""

from __future__ import annotations

from hatchet_sdk.contracts.dispatcher_pb2 import START_STEP_RUN, AssignedAction

from mageflow_hatchet_testengine.outgoing_messages import assigned_action
from mageflow_hatchet_testengine.scheduler_base import SchedulerBase
from mageflow_hatchet_testengine.state import (
    Attempt,
    TaskRun,
    TaskState,
    WorkerRecord,
    now_wall,
)


class TaskAssignment(SchedulerBase):
    """Queueing, assignment to slots, delivery of actions, and freeing of slots."""

    def _enqueue(self, task: TaskRun, *, delay: float) -> None:
        now = self._clock()
        task.state = TaskState.QUEUED
        task.worker_id = None
        task.queue_seq = next(self._seq)
        task.not_before = now + delay
        task.schedule_deadline = now + delay + task.definition.schedule_timeout
        self._queued[task.external_id] = task
        self._event(task, "QUEUED")

    def _assign(self) -> None:
        now = self._clock()
        ready = sorted(
            (t for t in self._queued.values() if t.not_before <= now),
            key=lambda t: (-t.run.priority, t.queue_seq),
        )
        if not ready:
            return
        workers = [w for w in self._workers.values() if w.accepts_work()]
        for task in ready:
            units = task.definition.slot_units
            eligible = [
                w
                for w in workers
                if task.definition.action_id in w.actions and w.slots - w.used_slots() >= units
            ]
            if not eligible:
                continue
            worker = min(eligible, key=lambda w: (w.used_slots() / w.slots, w.assigned_total))
            self._dispatch(task, worker)

    def _dispatch(self, task: TaskRun, worker: WorkerRecord) -> None:
        del self._queued[task.external_id]
        task.state = TaskState.RUNNING
        task.worker_id = worker.worker_id
        task.holds_slot = True
        task.schedule_deadline = None
        task.timeout_at = self._clock() + task.definition.execution_timeout
        task.attempts.append(
            Attempt(
                retry_count=task.retry_count, worker_id=worker.worker_id, assigned_at=now_wall()
            )
        )
        worker.running[task.external_id] = task
        worker.assigned_total += 1
        worker.max_concurrent = max(worker.max_concurrent, worker.used_slots())
        self._event(task, "ASSIGNED", worker_id=worker.worker_id)
        self._deliver(worker, assigned_action(self.tenant_id, task, START_STEP_RUN))

    def _deliver(self, worker: WorkerRecord, action: AssignedAction) -> None:
        if worker.stream is not None and not worker.stream.closed:
            worker.stream.queue.put(action)
        else:
            worker.pending.append(action)

    def _release(self, task: TaskRun) -> None:
        """Take the task off its worker (freeing its slot)."""
        if task.worker_id is not None:
            worker = self._workers.get(task.worker_id)
            if worker is not None:
                worker.running.pop(task.external_id, None)
        task.holds_slot = False
        task.timeout_at = None
