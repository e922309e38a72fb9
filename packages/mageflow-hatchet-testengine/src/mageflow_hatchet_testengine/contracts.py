"""The SDK's generated gRPC servicer base classes and ``add_*_to_server`` functions.

They come from the ``*_pb2_grpc`` modules shipped in hatchet-sdk, so the method tables
(names, request and response types) are exactly the ones the SDK's stubs call. Every
method a subclass does not override answers ``UNIMPLEMENTED``.

They are looked up dynamically and typed ``Any``: hatchet-sdk 1.43.1 ships a partial
``dispatcher_pb2_grpc.pyi`` (client stub only) and no stubs for the other modules, so a
static import would not type-check.
"""

from __future__ import annotations

import importlib
from typing import Any

_dispatcher: Any = importlib.import_module("hatchet_sdk.contracts.dispatcher_pb2_grpc")
_events: Any = importlib.import_module("hatchet_sdk.contracts.events_pb2_grpc")
_workflows_v0: Any = importlib.import_module("hatchet_sdk.contracts.workflows_pb2_grpc")
_workflows_v1: Any = importlib.import_module("hatchet_sdk.contracts.v1.workflows_pb2_grpc")
_dispatcher_v1: Any = importlib.import_module("hatchet_sdk.contracts.v1.dispatcher_pb2_grpc")

DispatcherServicer: Any = _dispatcher.DispatcherServicer
add_DispatcherServicer_to_server: Any = _dispatcher.add_DispatcherServicer_to_server
EventsServiceServicer: Any = _events.EventsServiceServicer
add_EventsServiceServicer_to_server: Any = _events.add_EventsServiceServicer_to_server
WorkflowServiceServicer: Any = _workflows_v0.WorkflowServiceServicer
add_WorkflowServiceServicer_to_server: Any = _workflows_v0.add_WorkflowServiceServicer_to_server
AdminServiceServicer: Any = _workflows_v1.AdminServiceServicer
add_AdminServiceServicer_to_server: Any = _workflows_v1.add_AdminServiceServicer_to_server
V1DispatcherServicer: Any = _dispatcher_v1.V1DispatcherServicer
add_V1DispatcherServicer_to_server: Any = _dispatcher_v1.add_V1DispatcherServicer_to_server
