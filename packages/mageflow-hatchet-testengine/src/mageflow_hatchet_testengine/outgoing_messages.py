"""The protobuf messages the scheduler sends to the SDK, built from its records: an
``AssignedAction`` for a worker's action stream, a ``WorkflowRunEvent`` for run subscribers.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hatchet_sdk.contracts.dispatcher_pb2 import (
    START_STEP_RUN,
    WORKFLOW_RUN_EVENT_TYPE_FINISHED,
    ActionType,
    AssignedAction,
    StepRunResult,
    WorkflowRunEvent,
)

from mageflow_hatchet_testengine.state import TaskRun, TaskState, WorkflowRun, now_wall

CANCELLED_ERROR = "CANCELLED: the task run was cancelled"
"""Error carried by cancelled task runs in run results (the SDK raises it from aio_result)."""


def _timestamp(wall: float) -> datetime:
    """A UTC datetime; protobuf Timestamp fields accept datetimes on assignment."""
    return datetime.fromtimestamp(wall, tz=timezone.utc)


def assigned_action(tenant_id: str, task: TaskRun, action_type: ActionType) -> AssignedAction:
    """The ``START_STEP_RUN`` or ``CANCEL_STEP_RUN`` action for ``task``'s current attempt."""
    run = task.run
    workflow = run.workflow
    parents = {p: json.loads(run.tasks[p].output or "{}") for p in task.definition.parents}
    payload = {
        "input": run.input,
        "parents": parents,
        "overrides": {},
        "user_data": {},
        "step_run_errors": {},
        "triggered_by": "manual",
        "triggers": {},
    }
    action = AssignedAction(
        tenant_id=tenant_id,
        workflow_run_id=run.external_id,
        get_group_key_run_id="",
        job_id=workflow.version_id,
        job_name=workflow.name,
        job_run_id=run.external_id,
        task_id=task.definition.step_id,
        task_run_external_id=task.external_id,
        action_id=task.definition.action_id,
        action_type=action_type,
        action_payload=json.dumps(payload) if action_type == START_STEP_RUN else "",
        task_name=task.definition.readable_id,
        retry_count=task.retry_count,
        additional_metadata=json.dumps(run.additional_metadata),
        priority=run.priority,
        workflow_id=workflow.workflow_id,
        workflow_version_id=workflow.version_id,
        task_inserted_at=_timestamp(task.created_at),
    )
    if run.parent_workflow_run_id:
        action.parent_workflow_run_id = run.parent_workflow_run_id
        action.child_workflow_index = run.child_index
        if run.child_key:
            action.child_workflow_key = run.child_key
    return action


def run_finished_event(run: WorkflowRun) -> WorkflowRunEvent:
    """The ``FINISHED`` event of a done run, with a result per completed, failed or
    cancelled task."""
    results: list[StepRunResult] = []
    for task in run.tasks.values():
        if task.state not in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED):
            continue
        result = StepRunResult(
            task_run_external_id=task.external_id,
            task_name=task.definition.readable_id,
            job_run_id=run.external_id,
        )
        if task.state == TaskState.COMPLETED:
            if task.output:
                result.output = task.output
        else:
            result.error = task.error or CANCELLED_ERROR
        results.append(result)
    return WorkflowRunEvent(
        workflow_run_id=run.external_id,
        event_type=WORKFLOW_RUN_EVENT_TYPE_FINISHED,
        event_timestamp=_timestamp(run.finished_at or now_wall()),
        results=results,
    )
