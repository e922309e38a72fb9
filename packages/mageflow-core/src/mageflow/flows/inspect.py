"""Reading state for ``get_state()``, ``mageflow.load`` and the CLI."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Protocol

from mageflow.engine import fields as F
from mageflow.engine import join_key, split_key
from mageflow.errors import SignatureNotFoundError
from mageflow.models.signatures import NodeDef, SignatureState, timestamp_of
from mageflow.models.status import SignatureStatus
from mageflow.store.base import StateStore


class Readable(Protocol):
    """What reading state needs: only the store (the CLI's read-only commands pass a view
    of the store alone, without building a backend)."""

    @property
    def store(self) -> StateStore: ...


async def read_def(mf: Readable, key: str) -> NodeDef:
    wf, sid = split_key(key)
    (raw,) = await F.read_defs(mf.store, wf, [sid])
    if raw is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    return NodeDef.model_validate(json.loads(raw))


def _planned(d: NodeDef) -> datetime | None:
    """A start time fixed at build time (``start_at``) before the node became due."""
    return timestamp_of(str(d.start_at_ms)) if d.start_at_ms is not None else None


def _steps_done(kind: str, status: str | None, step: str | None, total: int) -> int | None:
    """A chain's finished steps: all once done, else those before its current step."""
    if kind != "chain":
        return None
    if status == "done":
        return total
    return int(step or 0)


def swarm_counts(
    total: int, queued: int, slots: int, paused: int, ended: int, failed: int, status: str | None
) -> dict[str, int]:
    """A swarm's items by state. Items holding a slot while held by a suspend or an
    interrupt count as ``held``, not ``running``; what a canceled swarm never ran counts
    as ``canceled``, not ``pending``."""
    counts = {
        "total": total,
        "queued": queued,
        "running": max(slots - paused, 0),
        "done": ended - failed,
        "failed": failed,
    }
    rest = max(total - queued - slots - ended, 0)
    counts["canceled" if status == "canceled" else "pending"] = rest
    if paused:
        counts["held"] = paused
    return counts


async def read_state(mf: Readable, key: str) -> SignatureState:
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
        F.N_PAUSED,
        F.STEP,
        F.LAZY,
        F.QEND,
        F.SCANNED,
        F.AHEAD,
    ]
    at = len(F.def_fields(sid))
    raw = await mf.store.read(wf, [*F.def_fields(sid), *F.state_fields(sid, names)])
    raw = [F.def_value(sid, raw[:at]), *F.state_values(names, raw[at:], join_key(wf, sid))]
    if raw[0] is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    d = NodeDef.model_validate(json.loads(raw[0]))
    _, status, attempts, created, t0, t1, result, error, fin, nf, running, sent, *rest = raw
    if created is None and d.parent is not None:  # a bulk-built swarm item: its swarm's
        (created,) = await mf.store.read(wf, [F.of(d.parent, F.CREATED)])
    closed, due, idents, paused, step, *cursor = rest
    children: list[str] = []
    counts: dict[str, int] = {}
    if d.kind == "chain":
        steps = await mf.store.read_list(wf, F.aux(F.STEPS, sid))
        children = [join_key(wf, s) for s in steps]
    elif d.kind == "swarm":
        total = await mf.store.count(wf, F.aux(F.ITEMS, sid))
        queued = await mf.store.count(wf, F.aux(F.QUEUE, sid))
        queued += F.lazily_queued(*cursor)
        failed = int(nf or 0)
        counts = swarm_counts(
            total, queued, int(running or 0), int(paused or 0), int(fin or 0), failed, status
        )
        if total <= 1000:
            children = [join_key(wf, s) for s in await mf.store.read_list(wf, F.aux(F.ITEMS, sid))]
    elif d.kind == "graph":
        nodes = await mf.store.read_list(wf, F.aux(F.NODES, sid))
        counts = {"total": len(nodes), "running": int(running or 0), "ended": int(fin or 0)}
        counts["failed"] = int(nf or 0)
        children = [join_key(wf, s) for s in nodes]
    elif d.kind == "branch":
        kids = [d.selector, *d.cases.values(), *([d.default] if d.default else [])]
        children = [join_key(wf, s) for s in kids if s]
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
        steps_done=_steps_done(d.kind, status, step, len(children)),
        **SignatureState.timestamps(created, t0, t1),
    )
