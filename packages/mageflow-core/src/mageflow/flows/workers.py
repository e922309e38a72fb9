"""The worker registry: each worker process records a heartbeat in the store (what it
serves, where it runs, when it was last seen); ``mageflow workers`` and the dashboard
list the live ones. Entries not refreshed within :data:`STALE_AFTER` seconds are dropped
by the next reader; the whole record expires with the last heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mageflow.backend.base import serving_queues
from mageflow.errors import StoreUnavailableError
from mageflow.flows.inspect import Readable

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime

log = logging.getLogger("mageflow")

HEARTBEAT = 5.0
"""Seconds between two heartbeats of a worker."""
STALE_AFTER = 20
"""A worker not seen for this many seconds is gone."""


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process, as its last heartbeat described it."""

    id: str
    backend: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int | None
    tasks: list[str]
    started: float
    last_seen: float = field(default_factory=time.time)
    settings: dict[str, str] = field(default_factory=dict)
    """The backend's own summary (``describe()``: its broker, stream, pools ...)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_worker(rt: Runtime, worker_id: str, started: float) -> WorkerInfo:
    backend = rt.backend
    settings = {str(k): str(v) for k, v in backend.describe().items()}
    concurrency = getattr(backend, "concurrency", None)
    return WorkerInfo(
        id=worker_id,
        backend=backend.name,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=list(serving_queues()),
        concurrency=concurrency if isinstance(concurrency, int) else None,
        tasks=sorted(rt.tasks),
        started=started,
        settings=settings,
    )


async def heartbeat(rt: Runtime, stop: asyncio.Event) -> None:
    """Record this worker every :data:`HEARTBEAT` seconds until ``stop``, then forget it.
    A store outage skips beats (the entry goes stale, then comes back)."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    started = time.time()
    try:
        while not stop.is_set():
            info = describe_worker(rt, worker_id, started)
            try:
                await rt.store.put_worker(worker_id, json.dumps(info.as_dict()), STALE_AFTER)
            except StoreUnavailableError as exc:
                log.warning("worker heartbeat not recorded: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT)
    finally:
        try:
            await rt.store.drop_workers([worker_id])
        except Exception:  # closing: the entry then goes stale by itself
            log.debug("worker %s not unregistered", worker_id, exc_info=True)


async def live_workers(rt: Readable) -> list[WorkerInfo]:
    """The workers seen within :data:`STALE_AFTER` seconds, by host and pid; drops the
    stale entries."""
    now = time.time()
    live: list[WorkerInfo] = []
    stale: list[str] = []
    for worker_id, raw in (await rt.store.read_workers()).items():
        try:
            info = WorkerInfo(**json.loads(raw))
        except (ValueError, TypeError):
            info = None
        if info is not None and now - info.last_seen <= STALE_AFTER:
            live.append(info)
        else:
            stale.append(worker_id)
    await rt.store.drop_workers(stale)
    return sorted(live, key=lambda w: (w.host, w.pid, w.id))


async def with_heartbeat(
    rt: Runtime, stop: asyncio.Event, main: Callable[[], Awaitable[None]]
) -> None:
    """Run ``main()`` (a worker's reconciler loop) with this worker's heartbeat beside it.
    A factory, not a coroutine: a task cancelled before it began leaves none unawaited."""
    beat = asyncio.ensure_future(heartbeat(rt, stop))
    try:
        await main()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(beat, 2.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            beat.cancel()
