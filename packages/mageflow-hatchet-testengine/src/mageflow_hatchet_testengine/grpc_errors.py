"""Turn :class:`EngineError` into gRPC statuses inside servicer methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from mageflow_hatchet_testengine.errors import EngineError

T = TypeVar("T")


def abort(context: Any, error: EngineError) -> NoReturn:
    """End the RPC with the status that ``error`` maps to."""
    context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))
    raise AssertionError("grpc context.abort returned")  # pragma: no cover


def answer(context: Any, fn: Callable[[], T]) -> T:
    """Run ``fn``; an :class:`EngineError` it raises becomes the RPC's status."""
    try:
        return fn()
    except EngineError as e:
        abort(context, e)
