"""The engine's brain: queues, assignment to worker slots, retries, timeouts, cancels.
Its parts elsewhere: the workers it knows (``worker_registry``), what reads its records
(``queries``) and the messages it sends (``messages``).

Everything here runs under one re-entrant lock; the gRPC and HTTP handlers call in from
their own threads, and a ticker thread calls :meth:`Scheduler.tick` for the timers.

Semantics (mirroring Hatchet v1 as seen by the SDK):

- Queued task runs are assigned highest priority first, then first-in first-out, to a
  worker that registered the task's action, has an open ``ListenV2`` stream, is not paused
  and has enough free slots. A worker never holds more slots than it registered.
- A ``FAILED`` event with retries left re-queues the same task run (same external id) with
  ``retry_count + 1``, after ``retry_after_ms`` or the task's backoff; ``should_not_retry``
  or exhausted retries fail it.
- Execution timeouts count as failures (retried if retries remain); the worker is sent
  ``CANCEL_STEP_RUN``. A task queued longer than its schedule timeout is cancelled.
- A cancel sends ``CANCEL_STEP_RUN`` to the worker running the task (or drops it from the
  queue); the task ends ``CANCELLED`` and frees its slot at once.
- A worker whose heartbeats stop (or that unsubscribes) loses its in-flight task runs: they
  are re-queued with the same ``retry_count`` (a reassignment, not a retry), up to
  ``max_reassigns`` times. A closed action stream alone only stops new assignments, as the
  SDK closes it while it drains in-flight tasks on graceful shutdown.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hatchet_sdk.contracts.dispatcher_pb2 import (
    CANCEL_STEP_RUN,
    START_STEP_RUN,
    STEP_EVENT_TYPE_COMPLETED,
    STEP_EVENT_TYPE_FAILED,
    STEP_EVENT_TYPE_STARTED,
    StepActionEvent,
)
from hatchet_sdk.contracts.v1.workflows_pb2 import CreateWorkflowVersionRequest

from mageflow_hatchet_testengine.durations import parse_duration
from mageflow_hatchet_testengine.errors import InvalidRequestError, NotFoundError
from mageflow_hatchet_testengine.messages import (
    CANCELLED_ERROR,
    assigned_action,
    retry_delay,
    run_finished_event,
)
from mageflow_hatchet_testengine.queries import RunSubscriber
from mageflow_hatchet_testengine.state import (
    Attempt,
    LogRecord,
    TaskEvent,
    TaskRun,
    TaskState,
    WorkerRecord,
    WorkflowDef,
    WorkflowRun,
    now_wall,
)
from mageflow_hatchet_testengine.worker_registry import WorkerRegistry
from mageflow_hatchet_testengine.workflows import workflow_from_request

MIN_PRIORITY = 1
MAX_PRIORITY = 3


@dataclass(frozen=True)
class TriggerSpec:
    """One workflow run to create (from a v0 ``TriggerWorkflowRequest``)."""

    workflow_name: str
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    priority: int | None = None
    parent_workflow_run_id: str = ""
    parent_task_run_id: str = ""
    child_index: int = 0
    child_key: str = ""


@dataclass
class _ScheduledTrigger:
    scheduled_id: str
    spec: TriggerSpec
    at_wall: float
    run_id: str | None = None


class Scheduler(WorkerRegistry):
    """All engine state and the rules that move it (what reads it: :class:`SchedulerQueries`)."""

    def __init__(
        self,
        tenant_id: str,
        *,
        heartbeat_timeout: float,
        max_reassigns: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant_id = tenant_id
        self.heartbeat_timeout = heartbeat_timeout
        self.max_reassigns = max_reassigns
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._workflows: dict[str, WorkflowDef] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._runs: dict[str, WorkflowRun] = {}
        self._tasks: dict[str, TaskRun] = {}
        self._queued: dict[str, TaskRun] = {}
        self._subscribers: dict[str, set[RunSubscriber]] = {}
        self._scheduled: dict[str, _ScheduledTrigger] = {}
        self._orphan_logs: list[LogRecord] = []
        self._seq = itertools.count()
        self._event_ids = itertools.count(1)
        self._task_numbers = itertools.count(1)

    # ------------------------------------------------------------------ helpers

    def _event(self, task: TaskRun, event_type: str, message: str = "", **kw: Any) -> None:
        task.events.append(
            TaskEvent(
                event_id=next(self._event_ids),
                timestamp=now_wall(),
                event_type=event_type,
                message=message,
                retry_count=task.retry_count,
                **kw,
            )
        )

    # ---------------------------------------------------------------- workflows

    def put_workflow(self, req: CreateWorkflowVersionRequest) -> WorkflowDef:
        """Register (or re-register, as a new version) a workflow."""
        with self._lock:
            existing = self._workflows.get(req.name)
            workflow = workflow_from_request(
                req, workflow_id=existing.workflow_id if existing else None
            )
            self._workflows[workflow.name] = workflow
            self._notify()
            return workflow

    def workflow(self, name: str) -> WorkflowDef:
        with self._lock:
            workflow = self._workflows.get(name)
            if workflow is None:
                raise NotFoundError(f"workflow {name!r} not found")
            return workflow

    def workflow_names(self) -> list[str]:
        with self._lock:
            return list(self._workflows)

    # ----------------------------------------------------------------- triggers

    def _new_run(self, spec: TriggerSpec) -> WorkflowRun:
        workflow = self._workflows.get(spec.workflow_name)
        if workflow is None:
            raise NotFoundError(f"workflow {spec.workflow_name!r} not found")
        priority = workflow.default_priority if spec.priority is None else spec.priority
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidRequestError(
                f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
            )
        run = WorkflowRun(
            external_id=str(uuid.uuid4()),
            workflow=workflow,
            input=spec.input,
            additional_metadata=spec.additional_metadata,
            priority=priority,
            created_at=now_wall(),
            parent_workflow_run_id=spec.parent_workflow_run_id,
            parent_task_run_id=spec.parent_task_run_id,
            child_index=spec.child_index,
            child_key=spec.child_key,
        )
        return run

    def _start_run(self, run: WorkflowRun) -> None:
        self._runs[run.external_id] = run
        single = len(run.workflow.tasks) == 1
        for definition in run.workflow.tasks.values():
            # Like Hatchet v1, a standalone task's external id is its run's id.
            task = TaskRun(
                external_id=run.external_id if single else str(uuid.uuid4()),
                definition=definition,
                run=run,
                state=TaskState.WAITING,
                created_at=now_wall(),
                numeric_id=next(self._task_numbers),
            )
            run.tasks[definition.readable_id] = task
            self._tasks[task.external_id] = task
        for task in run.tasks.values():
            if not task.definition.parents:
                self._enqueue(task, delay=0.0)

    def trigger(self, specs: list[TriggerSpec]) -> list[str]:
        """Create one run per spec (all or nothing) and queue their root tasks."""
        with self._lock:
            runs = [self._new_run(spec) for spec in specs]
            for run in runs:
                self._start_run(run)
            self._assign()
            self._notify()
            return [run.external_id for run in runs]

    def schedule(self, spec: TriggerSpec, at_wall: list[float]) -> list[str]:
        """Create runs of ``spec`` at the given wall-clock times."""
        with self._lock:
            self._new_run(spec)  # validate now, as the real engine does
            ids: list[str] = []
            for at in at_wall:
                scheduled = _ScheduledTrigger(str(uuid.uuid4()), spec, at)
                self._scheduled[scheduled.scheduled_id] = scheduled
                ids.append(scheduled.scheduled_id)
            self._notify()
            return ids

    # --------------------------------------------------------------- queueing

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

    def _release(self, task: TaskRun) -> None:
        """Take the task off its worker (freeing its slot)."""
        if task.worker_id is not None:
            worker = self._workers.get(task.worker_id)
            if worker is not None:
                worker.running.pop(task.external_id, None)
        task.holds_slot = False
        task.timeout_at = None

    # ---------------------------------------------------------------- outcomes

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
            delay = retry_delay(task, retry_after_ms)
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

    # ------------------------------------------------------- worker-sent events

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

    def release_slot(self, task_run_id: str) -> None:
        with self._lock:
            task = self._task(task_run_id)
            if task.state == TaskState.RUNNING and task.holds_slot:
                task.holds_slot = False
                self._event(task, "SLOT_RELEASED", worker_id=task.worker_id)
                self._assign()
                self._notify()

    def refresh_timeout(self, task_run_id: str, increment: str) -> float:
        """Move the task's execution deadline to ``now + increment``; returns it (wall time)."""
        with self._lock:
            task = self._task(task_run_id)
            try:
                seconds = parse_duration(increment, default=0.0)
            except ValueError as e:
                raise InvalidRequestError(str(e)) from e
            if task.state != TaskState.RUNNING:
                raise InvalidRequestError(f"task run {task_run_id} is not running")
            task.timeout_at = self._clock() + seconds
            self._event(task, "TIMEOUT_REFRESHED", f"timeout refreshed by {increment}")
            self._notify()
            return now_wall() + seconds

    def put_log(self, task_run_id: str, message: str, level: str, retry_count: int) -> None:
        with self._lock:
            record = LogRecord(task_run_id, message, level, retry_count, now_wall())
            task = self._tasks.get(task_run_id)
            (task.logs if task is not None else self._orphan_logs).append(record)
            self._notify()

    def put_stream_chunk(self, task_run_id: str, chunk: bytes) -> None:
        with self._lock:
            self._task(task_run_id).stream_chunks.append(chunk)
            self._notify()

    # ------------------------------------------------------------------ cancel

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

    # ------------------------------------------------------------------- timers

    def tick(self) -> None:
        """Fire due timers: retries' delays, timeouts, lost workers, scheduled runs."""
        with self._lock:
            now = self._clock()
            for task in list(self._queued.values()):
                if task.schedule_deadline is not None and now >= task.schedule_deadline:
                    self._cancel_task(
                        task,
                        "SCHEDULING_TIMED_OUT",
                        "SCHEDULING_TIMED_OUT: no worker took the task within "
                        f"{task.definition.schedule_timeout:g}s",
                    )
                    self._progress_run(task.run)
            for worker in list(self._workers.values()):
                for task in list(worker.running.values()):
                    if task.timeout_at is not None and now >= task.timeout_at:
                        self._deliver(
                            worker, assigned_action(self.tenant_id, task, CANCEL_STEP_RUN)
                        )
                        self._fail_attempt(
                            task,
                            error="TIMED_OUT: the task exceeded its execution timeout of "
                            f"{task.definition.execution_timeout:g}s",
                            outcome="TIMED_OUT",
                            no_retry=False,
                            retry_after_ms=0,
                        )
                if not worker.gone and now - worker.last_heartbeat > self.heartbeat_timeout:
                    self._worker_lost(worker, "no heartbeat from the worker")
            wall = now_wall()
            for scheduled in list(self._scheduled.values()):
                if scheduled.run_id is None and wall >= scheduled.at_wall:
                    try:
                        run = self._new_run(scheduled.spec)
                    except (NotFoundError, InvalidRequestError):
                        scheduled.run_id = ""
                        continue
                    scheduled.run_id = run.external_id
                    self._start_run(run)
            self._assign()
            self._notify()
