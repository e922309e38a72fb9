"""Reading state for ``get_state()``, ``mageflow.load`` and the CLI."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

from mageflow.engine import fields as F
from mageflow.engine import join_key, split_key
from mageflow.errors import SignatureNotFoundError
from mageflow.models.signatures import NodeDef, SignatureState, timestamp_of
from mageflow.models.status import SignatureStatus

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime


async def read_def(mf: Runtime, key: str) -> NodeDef:
    wf, sid = split_key(key)
    (raw,) = await mf.store.read(wf, [sid])
    if raw is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    return NodeDef.model_validate(json.loads(raw))


def _planned(d: NodeDef) -> datetime | None:
    """A start time fixed at build time (``start_at``) before the node became due."""
    return timestamp_of(str(d.start_at_ms)) if d.start_at_ms is not None else None


async def read_state(mf: Runtime, key: str) -> SignatureState:
    wf, sid = split_key(key)
    names = [
        F.STATUS,
        F.ATTEMPTS,
        F.CREATED,
        F.STARTED,
        F.ENDED,
        F.RESULT,
        F.ERROR,
        F.N_ENDED,
        F.N_FAILED,
        F.N_RUNNING,
        F.SENT,
        F.CLOSED,
        F.DUE,
        F.IDENTS,
    ]
    raw = await mf.store.read(wf, [sid, *(F.of(sid, n) for n in names)])
    if raw[0] is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    d = NodeDef.model_validate(json.loads(raw[0]))
    _, status, attempts, created, t0, t1, result, error, fin, nf, running, sent, *rest = raw
    closed, due, idents = rest
    children: list[str] = []
    counts: dict[str, int] = {}
    if d.kind == "chain":
        steps = await mf.store.read_list(wf, F.aux(F.STEPS, sid))
        children = [join_key(wf, s) for s in steps]
    elif d.kind == "swarm":
        total = await mf.store.count(wf, F.aux(F.ITEMS, sid))
        queued = await mf.store.count(wf, F.aux(F.QUEUE, sid))
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
            children = [join_key(wf, s) for s in await mf.store.read_list(wf, F.aux(F.ITEMS, sid))]
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
        closed=(closed == "1") if d.kind == "swarm" else None,
        priority=d.priority,
        queue=d.queue,
        not_before=timestamp_of(due) if due else _planned(d),
        dispatched_at=timestamp_of(sent),
        identifiers={} if idents is None else json.loads(idents),
        **SignatureState.timestamps(created, t0, t1),
    )
