"""The :class:`StateStore` protocol: persistence plus atomic state transitions.

A workflow is one hash of records (``<sid>`` = structural definition, ``<sid>:<field>`` =
state) and a few auxiliary lists/sets, all under one hash tag. Every transition is one
atomic operation that returns the publishes it implies; the caller sends them.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mageflow.errors import (
    SignatureInUseError,
    SignatureNotFoundError,
    SwarmClosedError,
    WorkflowFinishedError,
)

TERMINAL = frozenset({"done", "failed", "canceled"})
HOLDING = frozenset({"suspended", "interrupted"})


@dataclass(frozen=True)
class Publish:
    """A task the store says must be published now: name, signature key, raw JSON payload."""

    task_name: str
    key: str
    payload: Any


@dataclass(frozen=True)
class StoreEvent:
    """Something a transition did besides the task's own change, for observers:
    ``done`` / ``failed`` (``key`` settled; ``detail`` = its kind), ``advanced`` (chain
    ``key`` started step ``detail``), ``item`` (swarm ``key``: item ``detail`` finished,
    ``ok``)."""

    name: str
    key: str
    detail: str
    ok: bool = True
    started_ms: int | None = None


@dataclass(frozen=True)
class Transition:
    """The result of a transition: what to publish, and what happened."""

    publishes: list[Publish] = field(default_factory=list)
    events: list[StoreEvent] = field(default_factory=list)


def _decode_events(wf: str, raw: str) -> list[StoreEvent]:
    out: list[StoreEvent] = []
    for entry in json.loads(raw):
        name, sid = entry[0], entry[1]
        if name == "item":
            out.append(
                StoreEvent("item", join_key(wf, sid), join_key(wf, entry[2]), entry[3] == "done")
            )
        elif name == "advanced":
            out.append(StoreEvent("advanced", join_key(wf, sid), join_key(wf, entry[2])))
        else:
            started = int(entry[3]) if len(entry) > 3 else None
            out.append(StoreEvent(name, join_key(wf, sid), entry[2], name == "done", started))
    return out


def _transition(wf: str, reply: Sequence[str]) -> Transition:
    events = _decode_events(wf, reply[2]) if len(reply) > 2 else []
    return Transition(decode_publishes(wf, reply[1]), events)


@dataclass(frozen=True)
class StartOutcome:
    """What a delivery should do: ``run`` the user code, ``redo`` (re-issue ``owed``
    publishes of an already finished run), or nothing (``dup``, ``held``, ``dropped``,
    ``missing``)."""

    action: Literal["run", "redo", "dup", "held", "dropped", "missing"]
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    owed: list[Publish] = field(default_factory=list)


def split_key(key: str) -> tuple[str, str]:
    """``"<wf>.<sid>"`` -> ``(wf, sid)``."""
    wf, sep, sid = key.partition(".")
    if not sep or not wf or not sid:
        raise SignatureNotFoundError(f"{key!r} is not a MageFlow signature key")
    return wf, sid


def join_key(wf: str, sid: str) -> str:
    return f"{wf}.{sid}"


def decode_publishes(wf: str, raw: str) -> list[Publish]:
    return [Publish(task, join_key(wf, sid), payload) for task, sid, payload in json.loads(raw)]


def _raise_for(key: str, reply: Sequence[str]) -> None:
    code = reply[1]
    if code == "missing":
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    if code == "closed":
        raise SwarmClosedError(f"swarm {key} is closed; create a new swarm to run more tasks")
    if code in ("finished", "swarm_finished"):
        status = reply[2] if len(reply) > 2 else "finished"
        raise WorkflowFinishedError(
            f"{key} already finished ({status}); a finished workflow cannot be changed"
        )
    if code == "already_run":
        raise SignatureInUseError(f"{key} was already run; sign a new one to run it again")
    if code == "callback":
        raise SignatureInUseError(f"{key} is a callback; it runs when its task finishes")
    if code == "chain_step":
        raise SignatureInUseError(f"{key} is a chain step; run the chain instead")
    if code == "not_root":
        raise SignatureInUseError(f"{key} is part of a larger workflow; cancel the workflow")
    raise RuntimeError(f"unexpected store reply for {key}: {list(reply)!r}")


class StateStore(abc.ABC):
    """Persistence and atomic transitions. :class:`RedisStore` and :class:`MemoryStore`
    implement :meth:`_transition` and the plain reads; the rest is shared."""

    active_ttl: int
    finished_ttl: int

    # -- primitives an implementation provides -------------------------------------
    @abc.abstractmethod
    async def _transition(self, wf: str, op: str, *args: str) -> list[str]:
        """Run one transition atomically; returns the reply list."""

    @abc.abstractmethod
    async def write(
        self, wf: str, fields: Mapping[str, str], lists: Mapping[str, Sequence[str]]
    ) -> None:
        """Create records: hash ``fields`` and auxiliary ``lists`` (``"i:<sid>"`` ...)."""

    @abc.abstractmethod
    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        """Delete a workflow's hash and the named auxiliary lists."""

    @abc.abstractmethod
    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        """Read hash fields (``"<sid>"``, ``"<sid>:s"``, ...)."""

    @abc.abstractmethod
    async def read_all(self, wf: str) -> dict[str, str]:
        """The whole workflow hash (to move a standalone signature into a workflow)."""

    @abc.abstractmethod
    async def read_list(self, wf: str, name: str, start: int = 0, stop: int = -1) -> list[str]:
        """An auxiliary list, e.g. ``"i:<sid>"`` (swarm items) or ``"q:<sid>"`` (queue)."""

    @abc.abstractmethod
    async def count(self, wf: str, name: str) -> int:
        """Length of an auxiliary list or set (``"i:<sid>"``, ``"q:<sid>"``, ``"r:<sid>"``)."""

    @abc.abstractmethod
    async def wait(self, wf: str, sid: str, timeout: float | None) -> str:
        """Block until ``sid`` is terminal (pushed, never polled); returns its status."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`mageflow.errors.StoreUnavailableError` when unreachable."""

    async def close(self) -> None:
        """Release connections."""

    async def list_workflows(self, limit: int = 100) -> list[str]:
        """Workflow ids, most recent first where the store can tell."""
        return []

    # -- typed transitions -----------------------------------------------------------
    async def start(self, key: str, run_id: str, payload: str) -> StartOutcome:
        wf, sid = split_key(key)
        reply = await self._transition(wf, "start", sid, run_id, payload)
        action = reply[0]
        if action == "run":
            return StartOutcome("run", kwargs=json.loads(reply[1]), attempt=int(reply[2]))
        if action == "redo":
            return StartOutcome("redo", owed=decode_publishes(wf, reply[1]))
        return StartOutcome(action)  # type: ignore[arg-type]

    async def finish(
        self, key: str, ok: bool, value: str, original_input: str = "{}"
    ) -> Transition:
        """Record success (``value`` = result JSON) or final failure (``value`` = error JSON
        ``{"type","message"}``, ``original_input`` = the message the task received)."""
        wf, sid = split_key(key)
        reply = await self._transition(wf, "finish", sid, "1" if ok else "0", value, original_input)
        if reply[0] == "missing":
            return Transition()
        return _transition(wf, reply)

    async def run(self, key: str, own_message: str | None, watch: bool = False) -> Transition:
        wf, sid = split_key(key)
        reply = await self._transition(wf, "run", sid, own_message or "", "1" if watch else "0")
        if reply[0] == "err":
            _raise_for(key, reply)
        return _transition(wf, reply)

    async def add_item(self, swarm_key: str, item_sid: str, fields: Mapping[str, str]) -> None:
        wf, sid = split_key(swarm_key)
        flat = [v for pair in fields.items() for v in pair]
        reply = await self._transition(wf, "add", sid, item_sid, *flat)
        if reply[0] == "err":
            _raise_for(swarm_key, reply)

    async def close_swarm(self, key: str) -> Transition:
        wf, sid = split_key(key)
        reply = await self._transition(wf, "close", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        return _transition(wf, reply)

    async def suspend(self, key: str, interrupt: bool, can_cancel: bool) -> list[str]:
        """Returns the run ids to cancel (interrupt on a backend that can cancel)."""
        wf, sid = split_key(key)
        mode = "interrupted" if interrupt else "suspended"
        reply = await self._transition(wf, "suspend", sid, mode, "1" if can_cancel else "0")
        if reply[0] == "err":
            _raise_for(key, reply)
        return [r for r in json.loads(reply[1]) if r]

    async def resume(self, key: str) -> Transition:
        wf, sid = split_key(key)
        reply = await self._transition(wf, "resume", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        return _transition(wf, reply)

    async def cancel(self, key: str) -> list[str]:
        wf, sid = split_key(key)
        reply = await self._transition(wf, "cancel", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        return [r for r in json.loads(reply[1]) if r]
