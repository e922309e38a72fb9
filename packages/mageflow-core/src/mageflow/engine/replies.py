"""Typed results of the engine's transitions, decoded from the script's replies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from mageflow.engine.keys import join_key


@dataclass(frozen=True)
class Publish:
    """A task the engine dispatched: publish it now (name, signature key, JSON payload),
    with its priority and, when the task manager holds the delay, when it may start."""

    task_name: str
    key: str
    payload: Any
    priority: int | None = None
    not_before_ms: int | None = None
    queue: str | None = None
    """The queue the task is routed to (``None``: the default queue)."""


@dataclass(frozen=True)
class EngineEvent:
    """Something a transition did besides the task's own change, for observers:
    ``done`` / ``failed`` / ``canceled`` (``key`` settled; ``detail`` = its kind),
    ``advanced`` (chain ``key`` started step ``detail``), ``continued`` (task ``key``
    started the workflow ``detail`` it returned), ``item`` (swarm ``key``: item
    ``detail`` ended, ``ok``)."""

    name: str
    key: str
    detail: str
    ok: bool = True
    started_ms: int | None = None


@dataclass(frozen=True)
class Transition:
    """What to publish, and what happened."""

    publishes: list[Publish] = field(default_factory=list)
    events: Sequence[EngineEvent] = ()
    """Decoded when first read (:class:`EventsText`): with no observer, never."""
    wake_ms: int | None = None
    """The earliest time a node this transition delayed may start: the reconciler must
    look at the workflow then."""
    duplicate: bool = False
    """Nothing was recorded: the task had settled already (or is unknown), or the first
    delivery it reports was not the node's run (a copy, a canceled workflow)."""
    collecting: bool = False
    """A swarm's result is assembled in parts: ``collect`` transitions go on with it."""


@dataclass(frozen=True)
class StartOutcome:
    """What a delivery should do: ``run`` the user code, ``redo`` (re-issue ``owed``
    publishes of an already finished run), or nothing (``dup``, ``held``, ``dropped``,
    ``missing``, ``mismatch``: the delivery names another task than the node's;
    ``leased``: a copy of a run whose running attempt holds the task)."""

    action: Literal["run", "redo", "dup", "held", "dropped", "missing", "mismatch", "leased"]
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    identifiers: dict[str, Any] = field(default_factory=dict)
    """The signature's ``task_identifiers`` (``run`` only)."""
    owed: list[Publish] = field(default_factory=list)
    node_task: str = ""
    """The task name the node was signed for (``mismatch`` only)."""
    lease_until_ms: int = 0
    """``leased`` only: until when (ms) the running attempt of the same run holds it."""


@dataclass(frozen=True)
class Reconciled:
    """One reconcile pass over a workflow: what to re-send, when to look again (ms,
    ``None``: nothing dispatched is pending), the root's status (``None``: gone)."""

    publishes: list[Publish]
    next_due_ms: float | None
    root_status: str | None
    in_flight: int = 0
    """Tasks started and not finished."""

    @property
    def idle(self) -> bool:
        """Nothing is dispatched or running, so nothing can be dispatched without a client
        command (which puts the workflow back in the live index): the sweep may forget it."""
        if self.root_status is None:
            return True
        return self.next_due_ms is None and not self.in_flight and self.root_status != "active"


def decode_publishes(wf: str, raw: str) -> list[Publish]:
    return [Publish(s[0], join_key(wf, s[1]), *s[2:]) for s in json.loads(raw)]


def decode_events(wf: str, raw: str) -> list[EngineEvent]:
    out: list[EngineEvent] = []
    for entry in json.loads(raw):
        name, sid = entry[0], entry[1]
        if name == "item":
            out.append(
                EngineEvent("item", join_key(wf, sid), join_key(wf, entry[2]), entry[3] == "done")
            )
        elif name in ("advanced", "continued"):
            out.append(EngineEvent(name, join_key(wf, sid), join_key(wf, entry[2])))
        else:
            started = int(entry[3]) if len(entry) > 3 else None
            out.append(EngineEvent(name, join_key(wf, sid), entry[2], name == "done", started))
    return out


class EventsText(Sequence[EngineEvent]):
    """A transition's events as the script replied them, decoded on first read: most
    transitions' events are read by nobody (no observer hook, DEBUG off), and decoding
    them is a tenth of a worker's own time per task."""

    __slots__ = ("_decoded", "_raw", "_wf")

    def __init__(self, wf: str, raw: str) -> None:
        self._wf, self._raw = wf, raw
        self._decoded: list[EngineEvent] | None = None

    def _events(self) -> list[EngineEvent]:
        if self._decoded is None:
            self._decoded = decode_events(self._wf, self._raw)
        return self._decoded

    @overload
    def __getitem__(self, index: int) -> EngineEvent: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[EngineEvent]: ...
    def __getitem__(self, index: int | slice) -> EngineEvent | Sequence[EngineEvent]:
        return self._events()[index]

    def __len__(self) -> int:
        return len(self._events())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._events())


def decode_transition(wf: str, reply: list[str]) -> Transition:
    raw = reply[2] if len(reply) > 2 else "[]"
    events: Sequence[EngineEvent] = () if raw == "[]" else EventsText(wf, raw)
    wake = int(reply[3]) if len(reply) > 3 and reply[3] else None
    collecting = len(reply) > 4 and reply[4] == "1"
    return Transition(decode_publishes(wf, reply[1]), events, wake, collecting=collecting)
