"""The engine's brain: :class:`Scheduler`, the parts below composed into one object.

Everything runs under one re-entrant lock; the gRPC and HTTP handlers call in from their
own threads, and a ticker thread calls :meth:`Scheduler.tick` for the timers. The rules
mirror Hatchet v1 as the SDK sees it; each part's module states its own:

- :mod:`~mageflow_hatchet_testengine.scheduler_base`: the shared tables, lock and clock;
- :mod:`~mageflow_hatchet_testengine.task_assignment`: the queue and the worker slots;
- :mod:`~mageflow_hatchet_testengine.run_triggers`: creating runs, now or scheduled;
- :mod:`~mageflow_hatchet_testengine.run_lifecycle`: completion, failure and retries,
  cancels, DAG progress;
- :mod:`~mageflow_hatchet_testengine.worker_registry`: workers, their streams and their
  loss;
- :mod:`~mageflow_hatchet_testengine.scheduler_views`: read-only lookups and snapshots;
- :mod:`~mageflow_hatchet_testengine.outgoing_messages`: the protobuf messages sent.

Here: workflow registration, what a running task sends besides its step events (slot
release, timeout refresh, logs, stream chunks), run result subscriptions, and the timers.
Execution timeouts count as failures (retried if retries remain); the worker is sent
``CANCEL_STEP_RUN``. A task queued longer than its schedule timeout is cancelled.
"""

from __future__ import annotations

from hatchet_sdk.contracts.dispatcher_pb2 import CANCEL_STEP_RUN
from hatchet_sdk.contracts.v1.workflows_pb2 import CreateWorkflowVersionRequest

from mageflow_hatchet_testengine.durations import parse_duration
from mageflow_hatchet_testengine.errors import InvalidRequestError, NotFoundError
from mageflow_hatchet_testengine.outgoing_messages import assigned_action, run_finished_event
from mageflow_hatchet_testengine.run_triggers import RunTriggers
from mageflow_hatchet_testengine.scheduler_views import SchedulerViews
from mageflow_hatchet_testengine.state import (
    LogRecord,
    RunSubscriber,
    TaskState,
    WorkflowDef,
    now_wall,
)
from mageflow_hatchet_testengine.worker_registry import WorkerRegistry
from mageflow_hatchet_testengine.workflows import workflow_from_request


class Scheduler(WorkerRegistry, RunTriggers, SchedulerViews):
    """All engine state and the rules that move it."""

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
