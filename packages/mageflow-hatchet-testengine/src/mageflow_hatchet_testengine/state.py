"""The engine's in-memory records: workflow definitions, workers, runs, task runs,
scheduled triggers, and the queues of the streams the engine answers.

These are mutable and owned by :class:`~mageflow_hatchet_testengine.scheduler.Scheduler`,
which guards them with one lock. Tests read them through the frozen snapshots of
:mod:`mageflow_hatchet_testengine.snapshots`, never directly.
"""

from __future__ import annotations

import enum
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hatchet_sdk.contracts.dispatcher_pb2 import AssignedAction, WorkflowRunEvent


class TaskState(str, enum.Enum):
    """Lifecycle of one task run inside a workflow run."""

    WAITING = "WAITING"
    """A DAG task whose parents have not all completed yet (not created, in Hatchet terms)."""
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    """Assigned to a worker (Hatchet reports assigned tasks as running)."""
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"
    """A DAG task that will never run because an ancestor failed or was cancelled."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED}
)


@dataclass(frozen=True)
class TaskDef:
    """One task of a registered workflow (from ``CreateTaskOpts``)."""

    readable_id: str
    action_id: str
    step_id: str
    parents: tuple[str, ...]
    retries: int
    execution_timeout: float
    schedule_timeout: float
    backoff_factor: float | None
    """``None``: no backoff policy, a retry is queued at once."""
    backoff_max_seconds: float
    """The cap of the backoff; Hatchet's default of one day when only the factor is set."""
    slot_units: int


@dataclass(frozen=True)
class WorkflowDef:
    """A registered workflow version (from ``CreateWorkflowVersionRequest``)."""

    name: str
    workflow_id: str
    version_id: str
    tasks: dict[str, TaskDef]
    default_priority: int


@dataclass
class TaskEvent:
    """One entry of a task run's history (the REST ``taskEvents`` of Hatchet)."""

    event_id: int
    timestamp: float
    event_type: str
    message: str
    retry_count: int
    worker_id: str | None = None
    error: str | None = None
    output: str | None = None


@dataclass
class LogRecord:
    """A line sent with ``EventsService/PutLog`` (``ctx.log`` and captured logging)."""

    task_run_id: str
    message: str
    level: str
    retry_count: int
    created_at: float


@dataclass
class Attempt:
    """One delivery of a task run to a worker."""

    retry_count: int
    worker_id: str
    assigned_at: float
    started_at: float | None = None
    finished_at: float | None = None
    outcome: str | None = None
    """COMPLETED, FAILED, TIMED_OUT, CANCELLED or REASSIGNED once the attempt is over."""
    error: str | None = None


class ActionStream:
    """One open ``Dispatcher/ListenV2`` stream: the actions waiting to be sent on it.

    ``None`` in the queue wakes the sending thread up to notice that the stream was
    replaced or closed.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[AssignedAction | None] = queue.Queue()
        self.closed = False

    def drain(self) -> list[AssignedAction]:
        """Take every action not sent yet."""
        items: list[AssignedAction] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)


class RunSubscriber:
    """One ``SubscribeToWorkflowRuns`` stream: receives a WorkflowRunEvent per finished run."""

    def __init__(self) -> None:
        self.queue: queue.Queue[WorkflowRunEvent | None] = queue.Queue()
        self.run_ids: set[str] = set()


@dataclass
class WorkerRecord:
    """A worker registered through ``Dispatcher/Register``."""

    worker_id: str
    name: str
    actions: frozenset[str]
    slots: int
    labels: dict[str, str | int]
    registered_at: float
    last_heartbeat: float
    """``time.monotonic()`` of the last heartbeat (or of registration)."""
    stream: ActionStream | None = None
    """The open ``ListenV2`` stream; a worker without one gets no new assignments."""
    pending: deque[AssignedAction] = field(default_factory=deque)
    """Actions produced while no stream was open, delivered when one opens."""
    paused: bool = False
    gone: bool = False
    """Unsubscribed, or heartbeats stopped: in-flight work was handed back to the queue."""
    running: dict[str, TaskRun] = field(default_factory=dict)
    """Task runs assigned to this worker and not finished, by task run external id."""
    max_concurrent: int = 0
    """Most slots ever used at once."""
    assigned_total: int = 0

    def used_slots(self) -> int:
        return sum(t.definition.slot_units for t in self.running.values() if t.holds_slot)

    def accepts_work(self) -> bool:
        return self.stream is not None and not self.paused and not self.gone


@dataclass
class TaskRun:
    """One task of one workflow run, across all its attempts."""

    external_id: str
    definition: TaskDef
    run: WorkflowRun
    state: TaskState
    created_at: float
    numeric_id: int
    retry_count: int = 0
    reassign_count: int = 0
    queue_seq: int = 0
    not_before: float = 0.0
    """``time.monotonic()`` before which a queued retry must not be assigned."""
    schedule_deadline: float | None = None
    timeout_at: float | None = None
    worker_id: str | None = None
    holds_slot: bool = False
    output: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    events: list[TaskEvent] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    stream_chunks: list[bytes] = field(default_factory=list)

    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass
class WorkflowRun:
    """One triggered workflow (a standalone task is a one-task workflow)."""

    external_id: str
    workflow: WorkflowDef
    input: dict[str, Any]
    additional_metadata: dict[str, Any]
    priority: int
    created_at: float
    parent_workflow_run_id: str = ""
    parent_task_run_id: str = ""
    child_index: int = 0
    child_key: str = ""
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    finished_at: float | None = None
    final_state: TaskState | None = None

    @property
    def is_dag(self) -> bool:
        return len(self.workflow.tasks) > 1

    @property
    def done(self) -> bool:
        return self.final_state is not None


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
class ScheduledTrigger:
    """A run of ``spec`` due at wall time ``at_wall`` (``ScheduleWorkflow``)."""

    scheduled_id: str
    spec: TriggerSpec
    at_wall: float
    run_id: str | None = None
    """The run created once due; ``""`` if it could not be created."""


def now_wall() -> float:
    return time.time()
