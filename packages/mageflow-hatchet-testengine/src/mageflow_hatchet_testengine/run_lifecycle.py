"""How attempts end and runs progress: completion, failure and retries, cancels.

- A ``FAILED`` event with retries left re-queues the same task run (same external id) with
  ``retry_count + 1``, after ``retry_after_ms`` or the task's backoff; ``should_not_retry``
  or exhausted retries fail it.
- A cancel sends ``CANCEL_STEP_RUN`` to the worker running the task (or drops it from the
  queue); the task ends ``CANCELLED`` and frees its slot at once.
- A task run that ends queues the DAG tasks whose parents all completed and skips those
  that can never run; once all are terminal the run is finalized and its subscribers get
  the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hatchet_sdk.contracts.dispatcher_pb2 import (
    CANCEL_STEP_RUN,
    STEP_EVENT_TYPE_COMPLETED,
    STEP_EVENT_TYPE_FAILED,
    STEP_EVENT_TYPE_STARTED,
    StepActionEvent,
)

from mageflow_hatchet_testengine.outgoing_messages import (
    CANCELLED_ERROR,
    assigned_action,
    run_finished_event,
)
from mageflow_hatchet_testengine.state import TaskRun, TaskState, WorkflowRun, now_wall
from mageflow_hatchet_testengine.task_assignment import TaskAssignment


class RunLifecycle(TaskAssignment):
    """Outcomes of attempts (worker step events, timeouts, cancels) and what follows them."""

    def _retry_delay(self, task: TaskRun, retry_after_ms: int) -> float:
        """Seconds before the next attempt, as Hatchet computes them: the task's own
        ``retry_after_ms``, else ``min(backoff_max_seconds, backoff_factor ** n)`` for
        retry ``n`` (1 for the first retry), else none. The power is compared in log space:
        it overflows a float for large ``n``."""
        if retry_after_ms > 0:
            return retry_after_ms / 1000.0
        factor = task.definition.backoff_factor
        if factor is None:
            return 0.0
        cap = task.definition.backoff_max_seconds
        retry = task.retry_count + 1
        if factor > 1 and retry * math.log(factor) >= math.log(max(cap, 1.0)):
            return cap
        return float(min(cap, factor**retry))

    def _fail_attempt(
        self, task: TaskRun, *, error: str, outcome: str, no_retry: bool, retry_after_ms: int
    ) -> None:
        self._release(task)
        attempt = task.current_attempt()
        if attempt is not None:
            attempt.outcome = outcome
            attempt.finished_at = now_wall()
            attempt.error = error
        if not no_retry and task.retry_count < task.definition.retries:
            self._event(task, outcome, error=error, worker_id=task.worker_id)
            delay = self._retry_delay(task, retry_after_ms)
            task.retry_count += 1
            self._event(task, "RETRYING", f"retrying in {delay:g}s")
            self._enqueue(task, delay=delay)
        else:
            self._finish_failed(task, error, event_type=outcome)

    def _finish_failed(self, task: TaskRun, error: str, *, event_type: str = "FAILED") -> None:
        self._queued.pop(task.external_id, None)
        task.state = TaskState.FAILED
        task.error = error
        task.finished_at = now_wall()
        self._event(task, event_type, error=error, worker_id=task.worker_id)
        self._progress_run(task.run)

    def _cancel_task(self, task: TaskRun, reason: str, error: str) -> bool:
        if task.state.is_terminal:
            return False
        if task.state == TaskState.WAITING:
            task.state = TaskState.SKIPPED
            task.finished_at = now_wall()
            self._event(task, "CANCELLED", reason)
            return True
        if task.state == TaskState.RUNNING and task.worker_id is not None:
            worker = self._workers.get(task.worker_id)
            if worker is not None and not worker.gone:
                self._deliver(worker, assigned_action(self.tenant_id, task, CANCEL_STEP_RUN))
            attempt = task.current_attempt()
            if attempt is not None:
                attempt.outcome = "CANCELLED"
                attempt.finished_at = now_wall()
            self._release(task)
        self._queued.pop(task.external_id, None)
        task.state = TaskState.CANCELLED
        task.error = error
        task.finished_at = now_wall()
        self._event(task, "CANCELLED", reason, worker_id=task.worker_id)
        return True

    def _progress_run(self, run: WorkflowRun) -> None:
        """Queue DAG tasks whose parents all completed, skip those that can never run,
        and finish the run once every task is terminal."""
        if run.done:
            return
        changed = True
        while changed:
            changed = False
            for other in run.tasks.values():
                if other.state != TaskState.WAITING:
                    continue
                parents = [run.tasks[p] for p in other.definition.parents]
                if any(p.state.is_terminal and p.state != TaskState.COMPLETED for p in parents):
                    other.state = TaskState.SKIPPED
                    other.finished_at = now_wall()
                    self._event(other, "SKIPPED", "an ancestor did not complete")
                    changed = True
                elif all(p.state == TaskState.COMPLETED for p in parents):
                    self._enqueue(other, delay=0.0)
                    changed = True
        if all(t.state.is_terminal for t in run.tasks.values()):
            self._finalize(run)

    def _finalize(self, run: WorkflowRun) -> None:
        states = {t.state for t in run.tasks.values()}
        if TaskState.FAILED in states:
            run.final_state = TaskState.FAILED
        elif TaskState.CANCELLED in states or TaskState.SKIPPED in states:
            run.final_state = TaskState.CANCELLED
        else:
            run.final_state = TaskState.COMPLETED
        run.finished_at = now_wall()
        event = run_finished_event(run)
        for subscriber in self._subscribers.pop(run.external_id, set()):
            subscriber.run_ids.discard(run.external_id)
            subscriber.queue.put(event)

    def step_event(self, event: StepActionEvent) -> None:
        """Apply a ``SendStepActionEvent`` (STARTED / COMPLETED / FAILED).

        Events for an attempt that is no longer current (a cancelled, timed-out or
        reassigned attempt, or a stale retry) are accepted and ignored.
        """
        with self._lock:
            task = self._task(event.task_run_external_id)
            if (
                task.state != TaskState.RUNNING
                or task.worker_id != event.worker_id
                or event.retry_count != task.retry_count
            ):
                return
            attempt = task.current_attempt()
            if event.event_type == STEP_EVENT_TYPE_STARTED:
                if attempt is not None and attempt.started_at is None:
                    attempt.started_at = now_wall()
                    task.started_at = task.started_at or attempt.started_at
                    self._event(task, "STARTED", worker_id=event.worker_id)
            elif event.event_type == STEP_EVENT_TYPE_COMPLETED:
                self._release(task)
                if attempt is not None:
                    attempt.outcome = "COMPLETED"
                    attempt.finished_at = now_wall()
                task.state = TaskState.COMPLETED
                task.output = event.event_payload or None
                task.finished_at = now_wall()
                self._event(task, "FINISHED", worker_id=event.worker_id, output=task.output)
                self._progress_run(task.run)
            elif event.event_type == STEP_EVENT_TYPE_FAILED:
                self._fail_attempt(
                    task,
                    error=event.event_payload,
                    outcome="FAILED",
                    no_retry=event.should_not_retry,
                    retry_after_ms=event.retry_after_ms,
                )
            else:
                return
            self._assign()
            self._notify()

    def cancel(self, external_ids: Iterable[str]) -> list[str]:
        """Cancel runs or task runs by external id; returns the task runs cancelled."""
        with self._lock:
            cancelled: list[str] = []
            for external_id in external_ids:
                run = self._runs.get(external_id)
                if run is not None:
                    targets = list(run.tasks.values())
                elif external_id in self._tasks:
                    targets = [self._tasks[external_id]]
                else:
                    continue
                touched: set[str] = set()
                for task in targets:
                    if self._cancel_task(task, "CANCELLED_BY_USER", CANCELLED_ERROR):
                        cancelled.append(task.external_id)
                        touched.add(task.run.external_id)
                for run_id in touched:
                    self._progress_run(self._runs[run_id])
            self._assign()
            self._notify()
            return cancelled
