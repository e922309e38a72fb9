"""What the dashboard shows, read from the store: workflow rows, trees, workers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mageflow.app import Mageflow
from mageflow.engine import join_key
from mageflow.errors import MageflowError
from mageflow.flows import workers
from mageflow.flows.inspect import read_state
from mageflow.models.signatures import SignatureState

MAX_CHILDREN = 200
"""Children of one node shown in a tree (the counts cover the rest)."""


def _seconds(state: SignatureState) -> float | None:
    start, end = state.started_at, state.finished_at
    if start is None:
        return None
    stop = end.timestamp() if end is not None else time.time()
    return max(stop - start.timestamp(), 0.0)


def progress(state: SignatureState) -> dict[str, Any]:
    """Done/total, and for a running swarm its throughput (items/s) and ETA (s)."""
    if state.kind == "swarm":
        total = state.counts.get("total", 0)
        ended = state.counts.get("done", 0) + state.counts.get("failed", 0)
        elapsed = _seconds(state)
        rate = ended / elapsed if elapsed and ended else None
        eta = (total - ended) / rate if rate and not state.status.is_terminal else None
        return {"ended": ended, "total": total, "rate": rate, "eta": eta}
    if state.kind == "chain":
        return {"ended": None, "total": len(state.children), "rate": None, "eta": None}
    return {"ended": int(state.status.is_terminal), "total": 1, "rate": None, "eta": None}


def row(state: SignatureState) -> dict[str, Any]:
    """A node without its children."""
    return {
        "key": state.key,
        "kind": state.kind,
        "name": state.name,
        "status": state.status.value,
        "attempts": state.attempts,
        "created": state.created_at.timestamp() if state.created_at else None,
        "started": state.started_at.timestamp() if state.started_at else None,
        "ended": state.finished_at.timestamp() if state.finished_at else None,
        "duration": _seconds(state),
        "result": state.result,
        "error": state.error,
        "counts": state.counts,
        "identifiers": state.identifiers,
        "progress": progress(state),
    }


async def tree(mf: Mageflow, key: str, depth: int = 0) -> dict[str, Any]:
    """Node ``key`` with its children (chains' steps, swarms' items, any composite kind's
    ``children``), each at most :data:`MAX_CHILDREN`; a chain's step count shows progress."""
    state = await read_state(mf, key)
    node = row(state)
    kids = [await tree(mf, child, depth + 1) for child in state.children[:MAX_CHILDREN]]
    node["children"] = kids
    node["hidden"] = max(len(state.children) - len(kids), 0)
    if state.kind == "chain":
        node["progress"]["ended"] = sum(1 for k in kids if k["status"] == "done")
    return node


@dataclass(frozen=True)
class Filters:
    """The workflow list's filters; ``age``: created within this many seconds."""

    status: str = ""
    name: str = ""
    identifier: str = ""
    age: float | None = None
    page: int = 1
    per_page: int = 20


async def workflow_rows(mf: Mageflow, f: Filters, scan: int = 2000) -> dict[str, Any]:
    """One page of root workflows, newest first, filtered."""
    if f.identifier:
        name, _, value = f.identifier.partition("=")
        keys = await mf.find_by_identifiers({name: value}, limit=scan)
    else:
        keys = [join_key(wf, "r") for wf in await mf.store.list_workflows(scan)]
    now = time.time()
    rows: list[dict[str, Any]] = []
    for key in keys:
        try:
            state = await read_state(mf, key)
        except MageflowError:  # expired between the listing and the read
            continue
        if f.status and state.status.value != f.status:
            continue
        if f.name and f.name.lower() not in state.name.lower():
            continue
        created = state.created_at.timestamp() if state.created_at else now
        if f.age is not None and now - created > f.age:
            continue
        rows.append(row(state))
    start = (max(f.page, 1) - 1) * f.per_page
    return {
        "total": len(rows),
        "page": max(f.page, 1),
        "per_page": f.per_page,
        "rows": rows[start : start + f.per_page],
    }


async def worker_rows(mf: Mageflow) -> list[dict[str, Any]]:
    return [w.as_dict() for w in await workers.live_workers(mf)]
