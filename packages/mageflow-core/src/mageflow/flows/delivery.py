"""Stream delivery: the engine appends dispatched tasks' messages to the backend's Redis
streams itself when the store lives on the same server and database."""

from __future__ import annotations

import json
import logging

from mageflow.backend.base import StreamDelivery, TaskBackend
from mageflow.store.base import StateStore
from mageflow.store.redis import RedisStore

log = logging.getLogger("mageflow.delivery")

HOLES = frozenset({"id", "task", "payload", "key", "stream"})


def _template(parts: tuple[str, ...], what: str) -> list[str]:
    if len(parts) % 2 != 1 or any(p not in HOLES for p in parts[1::2]):
        raise ValueError(f"{what}: literals at even indices, holes {sorted(HOLES)} at odd ones")
    return list(parts)


def engine_delivery(backend: TaskBackend, store: StateStore) -> str:
    """The engine's ``delivery`` argument for ``backend`` on ``store``: the backend's
    :class:`StreamDelivery` as the script reads it, or ``""`` (the client publishes) when
    the backend has none or its streams are not on the store's server and database."""
    spec: StreamDelivery | None = backend.stream_delivery()
    if spec is None or not isinstance(store, RedisStore):
        return ""
    if spec.server != store.server:
        log.debug(
            "stream delivery off: the broker's streams (%s) are not on the store's Redis (%s)",
            spec.server,
            store.server,
        )
        return ""
    return json.dumps(
        {
            "f": spec.entry_field,
            "m": spec.maxlen,
            "s": spec.default_stream,
            "r": spec.routed_prefix,
            "d": _template(spec.default_template, "default_template"),
            "q": _template(spec.routed_template, "routed_template"),
        },
        separators=(",", ":"),
    )
