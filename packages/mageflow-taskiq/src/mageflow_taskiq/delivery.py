"""The taskiq message format as a template, so that the engine can append a dispatched
task's message to a Redis stream broker's stream itself (see
:class:`mageflow.backend.base.StreamDelivery`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from taskiq import TaskiqMiddleware
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from mageflow.backend.base import HEADER_KEY, StreamDelivery
from mageflow.store.redis import server_identity

logger = logging.getLogger(__name__)

_HOLES = ("id", "task", "payload", "key", "stream")
_MARK = {hole: f"\x00mageflow-{hole}\x00" for hole in _HOLES}


def _template(broker: RedisStreamBroker, labels: dict[str, Any]) -> tuple[str, ...] | None:
    """The message the broker's own formatter writes, split at the holes; ``None`` when
    its serializer does not write each hole as a JSON string exactly once."""
    kicker: AsyncKicker[Any, Any] = AsyncKicker(_MARK["task"], broker, labels)
    kicker.custom_task_id = _MARK["id"]
    message = kicker._prepare_message(payload=_MARK["payload"], headers={HEADER_KEY: _MARK["key"]})
    try:
        text = broker.formatter.dumps(message).message.decode()
    except UnicodeDecodeError:
        return None
    found: list[tuple[int, str, str]] = []
    for hole, mark in _MARK.items():
        encoded = json.dumps(mark)
        at = text.find(encoded)
        if at < 0:
            continue
        if text.find(encoded, at + 1) >= 0:
            return None
        found.append((at, hole, encoded))
    if {hole for _, hole, _ in found} < {"id", "task", "payload", "key"}:
        return None
    parts: list[str] = []
    pos = 0
    for at, hole, encoded in sorted(found):
        parts += [text[pos:at], hole]
        pos = at + len(encoded)
    parts.append(text[pos:])
    if any("\x00" in part or "\\u0000" in part for part in parts[::2]):
        return None
    return tuple(parts)


def stream_delivery(broker: Any, default_stream: str, routed_prefix: str) -> StreamDelivery | None:
    """What the engine needs to append ``broker``'s messages itself, or ``None`` when it
    cannot do so faithfully: not a Redis stream broker, a serializer that is not JSON, or a
    middleware that rewrites messages before they are sent (``pre_send``)."""
    if not isinstance(broker, RedisStreamBroker):
        return None
    if any(type(m).pre_send is not TaskiqMiddleware.pre_send for m in broker.middlewares):
        logger.debug("stream delivery off: a middleware rewrites messages before sending")
        return None
    try:
        default = _template(broker, {})
        routed = _template(broker, {"queue_name": _MARK["stream"]})
    except Exception as exc:  # a formatter that cannot write the marks: publish instead
        logger.debug("stream delivery off: %r", exc)
        return None
    if default is None or routed is None or "stream" not in routed[1::2]:
        return None
    return StreamDelivery(
        server=server_identity(broker.connection_pool.connection_kwargs),
        default_stream=default_stream,
        routed_prefix=routed_prefix,
        default_template=default,
        routed_template=routed,
        entry_field="data",
        maxlen=broker.maxlen,
    )
