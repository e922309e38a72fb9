"""Turn ``v1.AdminService/PutWorkflow`` requests into :class:`WorkflowDef` records.

Only what the scheduler implements is accepted: tasks, DAG parents, retries, backoff,
execution and schedule timeouts, default priority and default-pool slot requests. Any
other feature that is actually used (concurrency, rate limits, conditions, durable or
batch tasks, on-failure tasks, event or cron triggers, sticky, worker labels,
idempotency, filters) is refused with :class:`UnsupportedError`, which the worker sees
as ``UNIMPLEMENTED`` at start-up.
"""

from __future__ import annotations

import uuid

from hatchet_sdk.contracts.v1.workflows_pb2 import CreateTaskOpts, CreateWorkflowVersionRequest

from mageflow_hatchet_testengine.durations import parse_duration
from mageflow_hatchet_testengine.errors import InvalidRequestError, UnsupportedError
from mageflow_hatchet_testengine.state import TaskDef, WorkflowDef

DEFAULT_EXECUTION_TIMEOUT = 60.0
DEFAULT_SCHEDULE_TIMEOUT = 300.0
DEFAULT_BACKOFF_MAX = 24 * 3600.0
"""Hatchet's cap of a backoff given without ``backoff_max_seconds``."""
DEFAULT_SLOT_POOL = "default"


def _unsupported_workflow_features(req: CreateWorkflowVersionRequest) -> list[str]:
    found: list[str] = []
    if req.event_triggers:
        found.append("event triggers (on_events)")
    if req.cron_triggers:
        found.append("cron triggers (on_crons)")
    if req.HasField("concurrency") or req.concurrency_arr:
        found.append("workflow concurrency")
    if req.HasField("on_failure_task"):
        found.append("on-failure task")
    if req.HasField("sticky"):
        found.append("sticky strategy")
    if req.default_filters:
        found.append("default filters")
    if req.HasField("idempotency"):
        found.append("idempotency")
    return found


def _unsupported_task_features(task: CreateTaskOpts) -> list[str]:
    found: list[str] = []
    if task.rate_limits:
        found.append("rate limits")
    if task.worker_labels:
        found.append("desired worker labels")
    if task.concurrency:
        found.append("task concurrency")
    conditions = task.conditions
    if (
        conditions.parent_override_conditions
        or conditions.sleep_conditions
        or conditions.user_event_conditions
    ):
        found.append("conditions (wait_for / skip_if / cancel_if)")
    if task.is_durable:
        found.append("durable tasks")
    if task.HasField("batch"):
        found.append("batch tasks")
    other_pools = sorted(k for k in task.slot_requests if k != DEFAULT_SLOT_POOL)
    if other_pools:
        found.append(f"slot pools {other_pools}")
    return [f"task {task.readable_id!r}: {feature}" for feature in found]


def _task_def(task: CreateTaskOpts) -> TaskDef:
    try:
        execution_timeout = parse_duration(task.timeout, default=DEFAULT_EXECUTION_TIMEOUT)
        schedule_timeout = parse_duration(
            task.schedule_timeout if task.HasField("schedule_timeout") else "",
            default=DEFAULT_SCHEDULE_TIMEOUT,
        )
    except ValueError as e:
        raise InvalidRequestError(f"task {task.readable_id!r}: {e}") from e
    if task.retries < 0:
        raise InvalidRequestError(f"task {task.readable_id!r}: retries must be >= 0")
    return TaskDef(
        readable_id=task.readable_id,
        action_id=task.action,
        step_id=str(uuid.uuid4()),
        parents=tuple(task.parents),
        retries=task.retries,
        execution_timeout=execution_timeout,
        schedule_timeout=schedule_timeout,
        backoff_factor=task.backoff_factor if task.HasField("backoff_factor") else None,
        backoff_max_seconds=(
            float(task.backoff_max_seconds)
            if task.HasField("backoff_max_seconds")
            else DEFAULT_BACKOFF_MAX
        ),
        slot_units=max(1, task.slot_requests.get(DEFAULT_SLOT_POOL, 1)),
    )


def _check_dag(name: str, tasks: dict[str, TaskDef]) -> None:
    for task in tasks.values():
        for parent in task.parents:
            if parent not in tasks:
                raise InvalidRequestError(
                    f"workflow {name!r}: task {task.readable_id!r} has unknown parent {parent!r}"
                )
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(readable_id: str) -> None:
        if readable_id in done:
            return
        if readable_id in visiting:
            raise InvalidRequestError(f"workflow {name!r}: cycle through task {readable_id!r}")
        visiting.add(readable_id)
        for parent in tasks[readable_id].parents:
            visit(parent)
        visiting.discard(readable_id)
        done.add(readable_id)

    for readable_id in tasks:
        visit(readable_id)


def workflow_from_request(
    req: CreateWorkflowVersionRequest, *, workflow_id: str | None = None
) -> WorkflowDef:
    """Validate ``req`` and build the workflow definition it describes.

    :param workflow_id: keep this id when the workflow is registered again (a new version).
    :raises UnsupportedError: the workflow uses a feature the engine does not implement.
    :raises InvalidRequestError: the workflow is malformed.
    """
    if not req.name:
        raise InvalidRequestError("workflow name is required")
    if not req.tasks:
        raise InvalidRequestError(f"workflow {req.name!r} has no tasks")
    unsupported = _unsupported_workflow_features(req)
    for task in req.tasks:
        unsupported.extend(_unsupported_task_features(task))
    if unsupported:
        raise UnsupportedError(
            f"workflow {req.name!r} uses features the Hatchet test engine does not implement: "
            + "; ".join(unsupported)
        )
    tasks: dict[str, TaskDef] = {}
    for task in req.tasks:
        if task.readable_id in tasks:
            raise InvalidRequestError(f"workflow {req.name!r}: duplicate task {task.readable_id!r}")
        tasks[task.readable_id] = _task_def(task)
    _check_dag(req.name, tasks)
    return WorkflowDef(
        name=req.name,
        workflow_id=workflow_id or str(uuid.uuid4()),
        version_id=str(uuid.uuid4()),
        tasks=tasks,
        default_priority=req.default_priority if req.HasField("default_priority") else 1,
    )
