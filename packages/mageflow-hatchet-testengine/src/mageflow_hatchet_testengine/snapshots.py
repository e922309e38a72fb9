"""Frozen, thread-safe copies of the engine's records, for assertions in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mageflow_hatchet_testengine.state import (
    Attempt,
    LogRecord,
    TaskEvent,
    TaskRun,
    TaskState,
    WorkerRecord,
    WorkflowRun,
)


@dataclass(frozen=True)
class AttemptInfo:
    """One delivery of a task run to a worker."""

    retry_count: int
    worker_id: str
    assigned_at: float
    started_at: float | None
    finished_at: float | None
    outcome: str | None
    """COMPLETED, FAILED, TIMED_OUT, CANCELLED, REASSIGNED, or None while in flight."""
    error: str | None

    @property
    def attempt_number(self) -> int:
        """1 for the first attempt, as ``ctx.attempt_number`` reports it."""
        return self.retry_count + 1


@dataclass(frozen=True)
class TaskEventInfo:
    """One entry of a task run's history (QUEUED, ASSIGNED, STARTED, FINISHED, ...)."""

    timestamp: float
    event_type: str
    message: str
    retry_count: int
    worker_id: str | None
    error: str | None


@dataclass(frozen=True)
class LogLine:
    """A log line a task sent with ``ctx.log`` or captured ``logging``."""

    task_run_id: str
    message: str
    level: str
    retry_count: int
    created_at: float


@dataclass(frozen=True)
class TaskRunInfo:
    """One task of a workflow run."""

    external_id: str
    readable_id: str
    action_id: str
    status: str
    """WAITING, QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED or SKIPPED."""
    retry_count: int
    attempts: tuple[AttemptInfo, ...]
    output: Any
    """The decoded JSON output, or None."""
    error: str | None
    worker_id: str | None
    events: tuple[TaskEventInfo, ...]
    logs: tuple[LogLine, ...]


@dataclass(frozen=True)
class RunInfo:
    """A workflow run (a standalone task run is a one-task workflow run)."""

    run_id: str
    workflow_name: str
    status: str
    """QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED."""
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    priority: int
    tasks: dict[str, TaskRunInfo]
    created_at: float
    finished_at: float | None

    @property
    def done(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELLED")

    @property
    def task(self) -> TaskRunInfo:
        """The only task of a standalone task run."""
        if len(self.tasks) != 1:
            raise ValueError(f"run {self.run_id} has {len(self.tasks)} tasks")
        return next(iter(self.tasks.values()))


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker."""

    worker_id: str
    name: str
    actions: frozenset[str]
    slots: int
    used_slots: int
    max_concurrent: int
    """Most slots this worker ever had in use at the same time, as the engine counted them."""
    running: tuple[str, ...]
    """External ids of the task runs assigned to it right now."""
    assigned_total: int
    connected: bool
    """An action stream (``ListenV2``) is open."""
    paused: bool
    gone: bool
    """Unsubscribed, or its heartbeats stopped."""


def _decode(output: str | None) -> Any:
    if not output:
        return None
    try:
        return json.loads(output)
    except ValueError:
        return output


def attempt_info(a: Attempt) -> AttemptInfo:
    return AttemptInfo(
        retry_count=a.retry_count,
        worker_id=a.worker_id,
        assigned_at=a.assigned_at,
        started_at=a.started_at,
        finished_at=a.finished_at,
        outcome=a.outcome,
        error=a.error,
    )


def event_info(e: TaskEvent) -> TaskEventInfo:
    return TaskEventInfo(
        timestamp=e.timestamp,
        event_type=e.event_type,
        message=e.message,
        retry_count=e.retry_count,
        worker_id=e.worker_id,
        error=e.error,
    )


def log_line(r: LogRecord) -> LogLine:
    return LogLine(
        task_run_id=r.task_run_id,
        message=r.message,
        level=r.level,
        retry_count=r.retry_count,
        created_at=r.created_at,
    )


def task_run_info(t: TaskRun) -> TaskRunInfo:
    return TaskRunInfo(
        external_id=t.external_id,
        readable_id=t.definition.readable_id,
        action_id=t.definition.action_id,
        status=t.state.value,
        retry_count=t.retry_count,
        attempts=tuple(attempt_info(a) for a in t.attempts),
        output=_decode(t.output),
        error=t.error,
        worker_id=t.worker_id,
        events=tuple(event_info(e) for e in t.events),
        logs=tuple(log_line(r) for r in t.logs),
    )


def run_status(run: WorkflowRun) -> str:
    """Hatchet's run status: the final state once done, else RUNNING once any task was
    assigned, else QUEUED."""
    if run.final_state is not None:
        return run.final_state.value
    if any(t.attempts for t in run.tasks.values()):
        return TaskState.RUNNING.value
    return TaskState.QUEUED.value


def run_info(run: WorkflowRun) -> RunInfo:
    return RunInfo(
        run_id=run.external_id,
        workflow_name=run.workflow.name,
        status=run_status(run),
        input=dict(run.input),
        additional_metadata=dict(run.additional_metadata),
        priority=run.priority,
        tasks={k: task_run_info(t) for k, t in run.tasks.items()},
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


def worker_info(w: WorkerRecord) -> WorkerInfo:
    return WorkerInfo(
        worker_id=w.worker_id,
        name=w.name,
        actions=w.actions,
        slots=w.slots,
        used_slots=w.used_slots(),
        max_concurrent=w.max_concurrent,
        running=tuple(w.running),
        assigned_total=w.assigned_total,
        connected=w.stream is not None,
        paused=w.paused,
        gone=w.gone,
    )
