"""What the read-only commands (status, tree, watch, ls, stats) need: the store alone (no
backend is built: a backend typo cannot break them, and they never pay a client's start),
failed items with their errors, and the progress ``watch`` renders."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
from rich.console import Console

from mageflow.engine import fields as F
from mageflow.engine import join_key, split_key
from mageflow.errors import ConfigurationError, MageflowError
from mageflow.flows.inspect import read_state
from mageflow.models.signatures import SignatureState
from mageflow.plugins.settings import MageflowSettings
from mageflow.store.base import StateStore
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import RedisStore

T = TypeVar("T")
console = Console()

NO_STORE = (
    "no Redis configured: set MAGEFLOW_REDIS_URL or pass --redis-url (the in-memory "
    "store lives inside one process and cannot be inspected from outside)"
)


@dataclass
class StoreView:
    """The store a read-only command reads (``flows.inspect.Readable``)."""

    store: StateStore


def open_store(redis_url: str | None, app_target: str | None) -> StateStore:
    """The store named by ``--redis-url`` / ``MAGEFLOW_REDIS_URL`` (with the prefix and TTLs
    of the environment); only without one, the store of ``--app``."""
    settings = MageflowSettings()
    url = redis_url or settings.redis_url
    if url and url != "memory://":
        return RedisStore(
            url,
            prefix=settings.key_prefix,
            active_ttl=settings.active_ttl,
            finished_ttl=settings.finished_ttl,
        )
    if app_target:
        from mageflow.cli.main import load_app

        store = load_app(app_target).store
        if not isinstance(store, MemoryStore):
            return store
    raise ConfigurationError(NO_STORE)


def read_only(coro_fn: Callable[[StoreView], Awaitable[T]], ctx: click.Context) -> T:
    """Run ``coro_fn`` on a view of the store; a MageFlow error is one line and exit 2."""

    async def main() -> T:
        view = StoreView(open_store(ctx.obj.get("redis_url"), ctx.obj.get("app")))
        try:
            await view.store.ping()
            return await coro_fn(view)
        finally:
            await view.store.close()

    try:
        return asyncio.run(main())
    except MageflowError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


FAILED_SCAN = 1000
"""Nodes ``status`` reads below a chain or swarm to find failed items."""


@dataclass
class FailedItems:
    """The first failed tasks below a node (``(key, name, error)``) and how many more."""

    shown: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    more: int = 0


async def failed_items(view: StoreView, state: SignatureState, first: int) -> FailedItems:
    """Failed tasks at any depth below ``state``, in item/step order: the first ``first``
    with their errors, and a count of the rest (a swarm's from its counter; otherwise
    those found in a scan of at most :data:`FAILED_SCAN` nodes)."""
    out = FailedItems()
    found, budget = 0, FAILED_SCAN
    children = state.children
    if state.kind == "swarm" and not children:  # over 1,000 items: read state does not list
        wf, sid = split_key(state.key)
        listed = await view.store.read_list(wf, F.aux(F.ITEMS, sid), 0, FAILED_SCAN - 1)
        children = [join_key(wf, item) for item in listed]
    todo = list(reversed(children))
    counted = state.counts.get("failed", 0)
    while todo and budget > 0:
        if len(out.shown) >= first and state.kind == "swarm":
            break  # the swarm's own counter says how many more
        budget -= 1
        node = await read_state(view, todo.pop())
        if node.kind == "task" and node.status.value == "failed" and node.error is not None:
            found += 1
            if len(out.shown) < first:
                out.shown.append((node.key, node.name, node.error))
        todo.extend(reversed(node.children))
    out.more = max(found, counted) - len(out.shown)
    return out


@dataclass
class ProgressView:
    """One frame of ``watch``: ``done`` of ``total`` (``None``: unknown) and a detail line."""

    total: int | None
    done: int
    detail: str


@dataclass
class ProgressMeter:
    """Turns successive states of one workflow into progress frames: steps done/total for
    a chain, items (nodes) finished/total with throughput and ETA for a swarm (graph).
    Feed it whenever a new state is known (a poll, or an event of ``wf.events()``);
    ``window`` seconds of samples make the throughput."""

    window: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def update(self, state: SignatureState) -> ProgressView:
        status = state.status.value
        if state.kind == "chain":
            total = len(state.children)
            done = state.steps_done or 0
            return ProgressView(total, done, f"{status} step {done}/{total}")
        if state.kind not in ("swarm", "graph"):
            return ProgressView(1, int(state.status.is_terminal), status)
        total = state.counts.get("total", 0)
        if state.kind == "graph":
            done = state.counts.get("ended", 0)
        else:
            done = state.counts.get("done", 0) + state.counts.get("failed", 0)
        counts = ", ".join(f"{k} {v}" for k, v in state.counts.items() if k != "total" and v)
        detail = f"{status} {done}/{total}" + (f" ({counts})" if counts else "")
        rate = self._rate(done)
        if rate is not None:
            detail += f" {rate:.1f}/s"
            left = total - done
            if left > 0 and rate > 0 and not state.status.is_terminal:
                detail += f" ETA {format_seconds(left / rate)}"
        return ProgressView(total, done, detail)

    def _rate(self, done: int) -> float | None:
        now = self.clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        return None if now <= t0 else (done - d0) / (now - t0)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def duration_of(state: SignatureState) -> float | None:
    """Seconds from start to end, or to now while it runs."""
    if state.started_at is None:
        return None
    end = state.finished_at or datetime.now(timezone.utc)
    return (end - state.started_at).total_seconds()


def ls_row(state: SignatureState) -> dict[str, Any]:
    """One workflow as ``ls --json`` prints it."""
    return {
        "key": state.key,
        "kind": state.kind,
        "name": state.name,
        "status": state.status.value,
        "created": state.created_at.isoformat() if state.created_at else None,
        "duration_s": duration_of(state),
        "counts": state.counts,
        "steps": len(state.children) if state.kind == "chain" else None,
        "steps_done": state.steps_done,
        "error": state.error,
        "identifiers": state.identifiers,
    }


def parse_age(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``2h``, ``1d`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise click.BadParameter(f"expected an age like 30s, 15m, 2h or 1d, got {text!r}") from None
    if value <= 0:
        raise click.BadParameter(f"an age must be more than 0, got {text!r}")
    return value
