"""Reading state for ``get_state()``, ``mageflow.load`` and the CLI."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mageflow.errors import SignatureNotFoundError
from mageflow.models.signatures import NodeDef, SignatureState
from mageflow.models.status import SignatureStatus
from mageflow.store.base import join_key, split_key

if TYPE_CHECKING:
    from mageflow.app import Mageflow


async def read_def(mf: Mageflow, key: str) -> NodeDef:
    wf, sid = split_key(key)
    (raw,) = await mf.store.read(wf, [sid])
    if raw is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    return NodeDef.model_validate(json.loads(raw))


async def read_state(mf: Mageflow, key: str) -> SignatureState:
    wf, sid = split_key(key)
    names = ["", ":s", ":a", ":c", ":d", ":t0", ":t1", ":r", ":e", ":fin", ":nf", ":run"]
    raw = await mf.store.read(wf, [sid + n for n in names])
    if raw[0] is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    d = NodeDef.model_validate(json.loads(raw[0]))
    _, status, attempts, created, dispatched, t0, t1, result, error, fin, nf, running = raw
    children: list[str] = []
    counts: dict[str, int] = {}
    if d.kind == "chain":
        children = [join_key(wf, s) for s in d.steps]
    elif d.kind == "swarm":
        total = await mf.store.count(wf, f"i:{sid}")
        queued = await mf.store.count(wf, f"q:{sid}")
        failed = int(nf or 0)
        counts = {
            "total": total,
            "queued": queued,
            "running": int(running or 0),
            "done": int(fin or 0) - failed,
            "failed": failed,
        }
        counts["pending"] = max(total - counts["queued"] - counts["running"] - int(fin or 0), 0)
        if total <= 1000:
            children = [join_key(wf, s) for s in await mf.store.read_list(wf, f"i:{sid}")]
    return SignatureState(
        key=key,
        kind=d.kind,
        name=d.name or d.task or d.kind,
        status=SignatureStatus(status or "pending"),
        attempts=int(attempts or 0),
        result=None if result is None else json.loads(result),
        error=None if error is None else json.loads(error),
        parent=join_key(wf, d.parent) if d.parent else None,
        children=children,
        counts=counts,
        **SignatureState.timestamps(created, dispatched, t0, t1),
    )
