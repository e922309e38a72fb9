"""Errors the engine answers requests with, mapped to gRPC codes and HTTP statuses."""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class EngineError(Exception):
    """A request the engine refuses."""

    grpc_code = "INTERNAL"
    """Name of the ``grpc.StatusCode`` member the gRPC services answer with."""
    http_status = 500


class NotFoundError(EngineError):
    """The workflow, run, task or worker does not exist."""

    grpc_code = "NOT_FOUND"
    http_status = 404


def found(record: _T | None, what: str) -> _T:
    """``record``, or :class:`NotFoundError` ("``what`` not found") if it is ``None``."""
    if record is None:
        raise NotFoundError(f"{what} not found")
    return record


class InvalidRequestError(EngineError):
    """The request is malformed (bad duration, unknown parent, ...)."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class UnsupportedError(EngineError):
    """A real Hatchet feature this test engine does not implement.

    It is refused loudly (gRPC ``UNIMPLEMENTED`` / HTTP 501) so that a test never passes
    because a feature was silently ignored.
    """

    grpc_code = "UNIMPLEMENTED"
    http_status = 501
