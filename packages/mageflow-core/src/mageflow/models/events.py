"""What observers (plugin hooks, logs) are told about workflows."""

from __future__ import annotations

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
