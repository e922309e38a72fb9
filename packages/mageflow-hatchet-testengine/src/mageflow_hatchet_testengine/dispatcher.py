"""``Dispatcher`` gRPC service: worker registration, action streams, step events, results.

Implemented: GetVersion, Register, ListenV2, Heartbeat, SendStepActionEvent, Unsubscribe,
ReleaseSlot, RefreshTimeout, UpsertWorkerLabels, SubscribeToWorkflowRuns.
Everything else (Listen v1, SubscribeToWorkflowEvents, group-key and batch events,
PutOverridesData, RestoreEvictedTask) is left to the generated base class, which answers
``UNIMPLEMENTED``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from hatchet_sdk.contracts.dispatcher_pb2 import (
    ActionEventResponse,
    AssignedAction,
    GetVersionRequest,
    GetVersionResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    RefreshTimeoutRequest,
    RefreshTimeoutResponse,
    ReleaseSlotRequest,
    ReleaseSlotResponse,
    StepActionEvent,
    SubscribeToWorkflowRunsRequest,
    UpsertWorkerLabelsRequest,
    UpsertWorkerLabelsResponse,
    WorkerLabels,
    WorkerListenRequest,
    WorkerRegisterRequest,
    WorkerRegisterResponse,
    WorkerUnsubscribeRequest,
    WorkerUnsubscribeResponse,
    WorkflowRunEvent,
)

from mageflow_hatchet_testengine.contracts import DispatcherServicer
from mageflow_hatchet_testengine.errors import EngineError, InvalidRequestError
from mageflow_hatchet_testengine.grpc_errors import abort, answer
from mageflow_hatchet_testengine.scheduler import Scheduler
from mageflow_hatchet_testengine.state import RunSubscriber

DEFAULT_WORKER_SLOTS = 100
"""Slots of a worker that registers without a slot count (Hatchet's default)."""

_POLL = 1.0
"""Seconds a stream thread waits before re-checking that its RPC is still active."""


def _label_value(label: WorkerLabels) -> str | int:
    return label.int_value if label.HasField("int_value") else label.str_value


class DispatcherService(DispatcherServicer):  # type: ignore[misc]
    """The ``Dispatcher`` service of the test engine."""

    def __init__(self, scheduler: Scheduler, engine_version: str) -> None:
        self._scheduler = scheduler
        self._engine_version = engine_version

    def GetVersion(self, request: GetVersionRequest, context: Any) -> GetVersionResponse:
        return GetVersionResponse(version=self._engine_version)

    def Register(self, request: WorkerRegisterRequest, context: Any) -> WorkerRegisterResponse:
        if request.webhook_id:
            abort(context, InvalidRequestError("webhook workers are not supported"))
        slots = request.slot_config.get("default", 0) or request.slots or DEFAULT_WORKER_SLOTS
        if slots < 0:
            abort(context, InvalidRequestError("slots must be positive"))
        worker = self._scheduler.register_worker(
            name=request.worker_name,
            actions=request.actions,
            slots=slots,
            labels={k: _label_value(v) for k, v in request.labels.items()},
        )
        return WorkerRegisterResponse(
            tenant_id=self._scheduler.tenant_id,
            worker_id=worker.worker_id,
            worker_name=worker.name,
        )

    def ListenV2(self, request: WorkerListenRequest, context: Any) -> Iterator[AssignedAction]:
        stream = answer(context, lambda: self._scheduler.open_stream(request.worker_id))
        context.add_callback(lambda: stream.queue.put(None))
        try:
            while context.is_active() and not stream.closed:
                try:
                    action = stream.queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if action is not None:
                    yield action
        finally:
            self._scheduler.close_stream(request.worker_id, stream)

    def Heartbeat(self, request: HeartbeatRequest, context: Any) -> HeartbeatResponse:
        answer(context, lambda: self._scheduler.heartbeat(request.worker_id))
        return HeartbeatResponse()

    def SendStepActionEvent(self, request: StepActionEvent, context: Any) -> ActionEventResponse:
        answer(context, lambda: self._scheduler.step_event(request))
        return ActionEventResponse(tenant_id=self._scheduler.tenant_id, worker_id=request.worker_id)

    def Unsubscribe(
        self, request: WorkerUnsubscribeRequest, context: Any
    ) -> WorkerUnsubscribeResponse:
        answer(context, lambda: self._scheduler.unsubscribe(request.worker_id))
        return WorkerUnsubscribeResponse(
            tenant_id=self._scheduler.tenant_id, worker_id=request.worker_id
        )

    def ReleaseSlot(self, request: ReleaseSlotRequest, context: Any) -> ReleaseSlotResponse:
        answer(context, lambda: self._scheduler.release_slot(request.task_run_external_id))
        return ReleaseSlotResponse()

    def RefreshTimeout(
        self, request: RefreshTimeoutRequest, context: Any
    ) -> RefreshTimeoutResponse:
        timeout_at = answer(
            context,
            lambda: self._scheduler.refresh_timeout(
                request.task_run_external_id, request.increment_timeout_by
            ),
        )
        return RefreshTimeoutResponse(
            timeout_at=datetime.fromtimestamp(timeout_at, tz=timezone.utc)
        )

    def UpsertWorkerLabels(
        self, request: UpsertWorkerLabelsRequest, context: Any
    ) -> UpsertWorkerLabelsResponse:
        labels = {k: _label_value(v) for k, v in request.labels.items()}
        answer(context, lambda: self._scheduler.upsert_labels(request.worker_id, labels))
        return UpsertWorkerLabelsResponse(
            tenant_id=self._scheduler.tenant_id, worker_id=request.worker_id
        )

    def SubscribeToWorkflowRuns(
        self, request_iterator: Iterator[SubscribeToWorkflowRunsRequest], context: Any
    ) -> Iterator[WorkflowRunEvent]:
        subscriber = RunSubscriber()

        def read_requests() -> None:
            try:
                for req in request_iterator:
                    self._scheduler.subscribe(subscriber, req.workflow_run_id)
            except EngineError:
                subscriber.queue.put(None)
            except Exception:
                pass

        reader = threading.Thread(
            target=read_requests, name="hatchet-test-engine-run-subscriptions", daemon=True
        )
        reader.start()
        context.add_callback(lambda: subscriber.queue.put(None))
        try:
            while context.is_active():
                try:
                    event = subscriber.queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if event is not None:
                    yield event
        finally:
            self._scheduler.drop_subscriber(subscriber)
