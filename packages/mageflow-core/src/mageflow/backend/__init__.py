"""The adapter contract (:class:`TaskBackend`) and the built-in ``local`` backend."""

from mageflow.backend.base import (
    HEADER_KEY,
    JSON,
    Capabilities,
    OutgoingTask,
    RunContext,
    TaskBackend,
    TaskDefinition,
    TaskHandler,
)

__all__ = [
    "HEADER_KEY",
    "JSON",
    "Capabilities",
    "OutgoingTask",
    "RunContext",
    "TaskBackend",
    "TaskDefinition",
    "TaskHandler",
]
