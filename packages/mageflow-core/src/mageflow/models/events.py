"""What observers (plugin hooks, logs) are told about workflows."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkflowEvent:
    """One thing that happened to one signature, chain or swarm.

    ``key`` is the signature the event is about and ``workflow`` the key of its root;
    ``parent`` the chain/swarm it belongs to. ``related`` is the next chain step
    (``chain_advanced``) or the finished item (``swarm_item_done``).
    """

    name: str
    key: str
    workflow: str
    kind: str = "task"
    task_name: str | None = None
    parent: str | None = None
    attempt: int | None = None
    run_id: str | None = None
    status: str | None = None
    error: dict[str, Any] | None = None
    related: str | None = None
    started_at: float | None = None
    """For ``workflow_finished``: when the chain, swarm or signature started (epoch s)."""
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


TERMINAL_EVENTS = frozenset({"done", "failed", "canceled"})
"""Streamed event names after which a node changes no more (unless retried)."""


@dataclass(frozen=True)
class StreamedEvent:
    """One state change of a node, as ``wf.events()`` yields it, in the order the
    engine's transitions made them.

    ``event`` is one of ``started``, ``retried`` (a later attempt of a task started;
    ``attempt`` says which), ``done``, ``failed``, ``canceled``, ``suspended``,
    ``interrupted``, ``resumed``, ``requeued`` (back to pending: interrupted while running,
    or reopened by ``retry()``), ``skipped``; ``status`` is the node's status after it.
    ``key`` is the node's signature key, ``workflow`` its root's, ``at`` epoch seconds
    (the transition's clock) and ``id`` the id of the stream entry that holds it (one
    per transition: the changes one transition made share it; ``events(after=id)``
    resumes after them).
    """

    id: str
    event: str
    key: str
    workflow: str
    kind: str
    status: str
    at: float
    task_name: str | None = None
    attempt: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    @classmethod
    def from_entry(cls, wf: str, entry_id: str, raw: str) -> list[StreamedEvent]:
        """Decode one stream entry: the changes of one transition, in order, each
        ``[sid, event, kind, task, ms, attempt, status]``."""
        return [
            cls(
                id=entry_id,
                event=event,
                key=f"{wf}.{sid}",
                workflow=f"{wf}.r",
                kind=kind,
                status=status,
                at=ms / 1000,
                task_name=task or None,
                attempt=attempt or None,
            )
            for sid, event, kind, task, ms, attempt, status in json.loads(raw)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}
