"""Workflow registration and triggering: ``v1.AdminService`` and the v0 ``WorkflowService``.

Implemented:

- ``v1.AdminService``: PutWorkflow, GetRunDetails, CancelTasks (by external ids),
  TriggerWorkflowRun. ReplayTasks and BranchDurableTask answer ``UNIMPLEMENTED``.
- ``WorkflowService`` (v0): TriggerWorkflow, BulkTriggerWorkflow, ScheduleWorkflow.
  PutWorkflow (v0), PutRateLimit and PauseRateLimit answer ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from hatchet_sdk.contracts.v1.shared.trigger_pb2 import TriggerWorkflowRequest
from hatchet_sdk.contracts.v1.workflows_pb2 import (
    CancelTasksRequest,
    CancelTasksResponse,
    CreateWorkflowVersionRequest,
    CreateWorkflowVersionResponse,
    GetRunDetailsRequest,
    GetRunDetailsResponse,
    RunStatus,
    TaskRunDetail,
    TriggerWorkflowRunRequest,
    TriggerWorkflowRunResponse,
)
from hatchet_sdk.contracts.workflows_pb2 import (
    BulkTriggerWorkflowRequest,
    BulkTriggerWorkflowResponse,
    ScheduledWorkflow,
    ScheduleWorkflowRequest,
    TriggerWorkflowResponse,
    WorkflowVersion,
)

from mageflow_hatchet_testengine.contracts import AdminServiceServicer, WorkflowServiceServicer
from mageflow_hatchet_testengine.errors import InvalidRequestError, UnsupportedError
from mageflow_hatchet_testengine.grpc_errors import answer
from mageflow_hatchet_testengine.scheduler import Scheduler
from mageflow_hatchet_testengine.snapshots import run_status
from mageflow_hatchet_testengine.state import TaskState, TriggerSpec, WorkflowRun

_STATUS_TO_PROTO = {
    "QUEUED": RunStatus.QUEUED,
    "RUNNING": RunStatus.RUNNING,
    "COMPLETED": RunStatus.COMPLETED,
    "FAILED": RunStatus.FAILED,
    "CANCELLED": RunStatus.CANCELLED,
}


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidRequestError(f"{what} is not valid JSON: {e}") from e
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return value


def trigger_spec(req: TriggerWorkflowRequest) -> TriggerSpec:
    """Read a v0 trigger request; sticky/label placement is refused as unsupported."""
    if req.HasField("desired_worker_id") and req.desired_worker_id:
        raise UnsupportedError("desired_worker_id (sticky runs) is not implemented")
    if req.desired_worker_labels:
        raise UnsupportedError("desired_worker_labels is not implemented")
    return TriggerSpec(
        workflow_name=req.name,
        input=_json_object(req.input, "input"),
        additional_metadata=_json_object(
            req.additional_metadata if req.HasField("additional_metadata") else "",
            "additional_metadata",
        ),
        priority=req.priority if req.HasField("priority") else None,
        parent_workflow_run_id=req.parent_id if req.HasField("parent_id") else "",
        parent_task_run_id=(
            req.parent_task_run_external_id if req.HasField("parent_task_run_external_id") else ""
        ),
        child_index=req.child_index if req.HasField("child_index") else 0,
        child_key=req.child_key if req.HasField("child_key") else "",
    )


def run_details(run: WorkflowRun) -> GetRunDetailsResponse:
    """The ``GetRunDetails`` answer for ``run`` (call with the scheduler lock held)."""
    task_runs: dict[str, TaskRunDetail] = {}
    for readable_id, task in run.tasks.items():
        if task.state in (TaskState.WAITING, TaskState.SKIPPED):
            continue
        detail = TaskRunDetail(
            external_id=task.external_id,
            status=_STATUS_TO_PROTO[task.state.value],
            readable_id=readable_id,
        )
        if task.output:
            detail.output = task.output.encode()
        if task.state in (TaskState.FAILED, TaskState.CANCELLED) and task.error:
            detail.error = task.error
        task_runs[readable_id] = detail
    return GetRunDetailsResponse(
        input=json.dumps(run.input).encode(),
        status=_STATUS_TO_PROTO[run_status(run)],
        task_runs=task_runs,
        done=run.done,
        additional_metadata=json.dumps(run.additional_metadata).encode(),
    )


class AdminService(AdminServiceServicer):  # type: ignore[misc]
    """The ``v1.AdminService`` of the test engine."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def PutWorkflow(
        self, request: CreateWorkflowVersionRequest, context: Any
    ) -> CreateWorkflowVersionResponse:
        workflow = answer(context, lambda: self._scheduler.put_workflow(request))
        return CreateWorkflowVersionResponse(
            id=workflow.version_id, workflow_id=workflow.workflow_id
        )

    def GetRunDetails(self, request: GetRunDetailsRequest, context: Any) -> GetRunDetailsResponse:
        def details() -> GetRunDetailsResponse:
            with self._scheduler.lock:
                return run_details(self._scheduler.get_run(request.external_id))

        return answer(context, details)

    def CancelTasks(self, request: CancelTasksRequest, context: Any) -> CancelTasksResponse:
        def cancel() -> list[str]:
            if request.HasField("filter"):
                raise UnsupportedError("cancelling by filter is not implemented")
            return self._scheduler.cancel(request.external_ids)

        return CancelTasksResponse(cancelled_tasks=answer(context, cancel))

    def TriggerWorkflowRun(
        self, request: TriggerWorkflowRunRequest, context: Any
    ) -> TriggerWorkflowRunResponse:
        def trigger() -> str:
            if request.desired_worker_labels:
                raise UnsupportedError("desired_worker_labels is not implemented")
            spec = TriggerSpec(
                workflow_name=request.workflow_name,
                input=_json_object(request.input, "input"),
                additional_metadata=_json_object(
                    request.additional_metadata, "additional_metadata"
                ),
                priority=request.priority if request.HasField("priority") else None,
            )
            return self._scheduler.trigger([spec])[0]

        return TriggerWorkflowRunResponse(external_id=answer(context, trigger))


class WorkflowService(WorkflowServiceServicer):  # type: ignore[misc]
    """The v0 ``WorkflowService`` of the test engine (how SDK 1.43 triggers runs)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def TriggerWorkflow(
        self, request: TriggerWorkflowRequest, context: Any
    ) -> TriggerWorkflowResponse:
        run_ids = answer(context, lambda: self._scheduler.trigger([trigger_spec(request)]))
        return TriggerWorkflowResponse(workflow_run_id=run_ids[0])

    def BulkTriggerWorkflow(
        self, request: BulkTriggerWorkflowRequest, context: Any
    ) -> BulkTriggerWorkflowResponse:
        run_ids = answer(
            context,
            lambda: self._scheduler.trigger([trigger_spec(r) for r in request.workflows]),
        )
        return BulkTriggerWorkflowResponse(workflow_run_ids=run_ids)

    def ScheduleWorkflow(self, request: ScheduleWorkflowRequest, context: Any) -> WorkflowVersion:
        def schedule() -> WorkflowVersion:
            spec = TriggerSpec(
                workflow_name=request.name,
                input=_json_object(request.input, "input"),
                additional_metadata=_json_object(
                    request.additional_metadata if request.HasField("additional_metadata") else "",
                    "additional_metadata",
                ),
                priority=request.priority if request.HasField("priority") else None,
                parent_workflow_run_id=request.parent_id if request.HasField("parent_id") else "",
                parent_task_run_id=(
                    request.parent_task_run_external_id
                    if request.HasField("parent_task_run_external_id")
                    else ""
                ),
                child_index=request.child_index if request.HasField("child_index") else 0,
                child_key=request.child_key if request.HasField("child_key") else "",
            )
            times = [ts.ToNanoseconds() / 1e9 for ts in request.schedules]
            ids = self._scheduler.schedule(spec, times)
            workflow = self._scheduler.workflow(request.name)
            now = datetime.now(tz=timezone.utc)
            return WorkflowVersion(
                id=workflow.version_id,
                created_at=now,
                updated_at=now,
                version=workflow.version_id,
                workflow_id=workflow.workflow_id,
                scheduled_workflows=[
                    ScheduledWorkflow(id=i, trigger_at=ts)
                    for i, ts in zip(ids, request.schedules, strict=True)
                ],
            )

        return answer(context, schedule)
