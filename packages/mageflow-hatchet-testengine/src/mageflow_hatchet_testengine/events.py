"""``EventsService``: task logs and stream chunks.

Implemented: PutLog (stored per task run), PutStreamEvent (stored per task run; there is
no subscriber side). Push, BulkPush and ReplaySingleEvent answer ``UNIMPLEMENTED``: the
engine has no event triggers.
"""

from __future__ import annotations

from typing import Any

from hatchet_sdk.contracts.events_pb2 import (
    PutLogRequest,
    PutLogResponse,
    PutStreamEventRequest,
    PutStreamEventResponse,
)

from mageflow_hatchet_testengine.contracts import EventsServiceServicer
from mageflow_hatchet_testengine.grpc_errors import answer
from mageflow_hatchet_testengine.scheduler import Scheduler


class EventsService(EventsServiceServicer):  # type: ignore[misc]
    """The ``EventsService`` of the test engine."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def PutLog(self, request: PutLogRequest, context: Any) -> PutLogResponse:
        self._scheduler.put_log(
            request.task_run_external_id,
            request.message,
            request.level or "INFO",
            request.task_retry_count,
        )
        return PutLogResponse()

    def PutStreamEvent(
        self, request: PutStreamEventRequest, context: Any
    ) -> PutStreamEventResponse:
        answer(
            context,
            lambda: self._scheduler.put_stream_chunk(request.task_run_external_id, request.message),
        )
        return PutStreamEventResponse()
