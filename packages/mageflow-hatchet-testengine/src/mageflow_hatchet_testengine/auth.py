"""Bearer-token checks, so a client configured with another engine's token fails loudly."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc


def bearer_matches(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>`` (scheme case-insensitive)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and value.strip() == token


def _deny(context: Any) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing bearer token")


def _deny_unary(request: Any, context: Any) -> Any:
    _deny(context)


def _deny_stream(request: Any, context: Any) -> Iterator[Any]:
    _deny(context)
    yield from ()


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Rejects every RPC whose ``authorization`` metadata is not ``bearer <token>``."""

    def __init__(self, token: Callable[[], str]) -> None:
        """:param token: returns the expected token (known only once the ports are bound)."""
        self._token = token

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        metadata: Mapping[str, str] = dict(details.invocation_metadata or ())
        if bearer_matches(metadata.get("authorization"), self._token()):
            return handler
        kinds: dict[tuple[bool, bool], Callable[..., Any]] = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        key = (bool(handler.request_streaming), bool(handler.response_streaming))
        behaviour = _deny_stream if key[1] else _deny_unary
        return kinds[key](
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
