"""Names of the records the engine keeps per node (see the glossary at the top of
``transitions.lua``). Python code reads and writes them only through these names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mageflow.engine.keys import join_key

if TYPE_CHECKING:
    from mageflow.store.base import StateStore

STATUS = "status"
CREATED = "created"
KWARGS = "kwargs"
IDENTS = "idents"
SENT = "sent"
STARTED = "started"
ENDED = "ended"
RESULT = "result"
ERROR = "error"
ATTEMPTS = "attempts"
CLOSED = "closed"
FLAT = "flat"
WAITED = "waited"
N_RUNNING = "n_running"
N_ENDED = "n_ended"
N_FAILED = "n_failed"
N_PAUSED = "n_paused"
STEP = "step"
SCANNED = "scanned"
LAZY = "lazy"
QEND = "qend"
AHEAD = "ahead"

STEPS = "steps"
ITEMS = "items"
QUEUE = "queue"
PRIO = "prio"
DUE = "due"
DONE_CHANNEL = "done"

RUN_ID = "run_id"
RECORD = "x"
"""A packed workflow's run record of a node: ``status|sent|started|attempts|ended|run_id``
(trailing parts left out when absent; see RUN RECORD in ``transitions.lua``)."""
RECORD_PARTS = (STATUS, SENT, STARTED, ATTEMPTS, ENDED, RUN_ID)
TEMPLATE = "tpl"
"""A swarm's item template: in a packed workflow, the definition of the items built with
the swarm (or added in bulk), which keep none of their own; such an item exists while its
run record does (see ITEM TEMPLATES in ``transitions.lua``)."""
LAYOUT = "L"
"""The root's layout field: ``"2"`` when the workflow keeps run records."""
PACKED = "2"

N_DEPS = "n_deps"
NODES = "nodes"
SOURCES = "sources"
SINKS = "sinks"

TERMINAL = frozenset({"done", "failed", "canceled", "skipped"})
HOLDING = frozenset({"suspended", "interrupted"})


def of(sid: str, name: str) -> str:
    """The hash field of record ``name`` of node ``sid``."""
    return f"{sid}:{name}"


def item_swarm(sid: str) -> str | None:
    """The swarm of item ``sid`` (``<swarm>.i`` and 16 hex digits: no other sid ends in
    ``.i`` and 16 characters), or ``None`` for any other node."""
    return sid[:-18] if len(sid) > 18 and sid[-18:-16] == ".i" else None


def stored_def(fields: Mapping[str, str], sid: str) -> str | None:
    """Node ``sid``'s definition among a workflow's records ``fields`` (read, or about to
    be written): its own, or its swarm's item template while its run record exists."""
    own = fields.get(sid)
    if own is not None:
        return own
    swarm = item_swarm(sid)
    if swarm is None or of(sid, RECORD) not in fields:
        return None
    return fields.get(of(swarm, TEMPLATE))


def def_fields(sid: str) -> list[str]:
    """The hash fields that hold node ``sid``'s definition (read them in one call, then
    decode with :func:`def_value`): its own, and for an item its run record and its
    swarm's item template."""
    swarm = item_swarm(sid)
    return [sid] if swarm is None else [sid, of(sid, RECORD), of(swarm, TEMPLATE)]


def def_value(sid: str, values: Sequence[str | None]) -> str | None:
    """Node ``sid``'s definition from the values read for :func:`def_fields`, as
    :func:`stored_def` finds it."""
    found = {f: v for f, v in zip(def_fields(sid), values, strict=True) if v is not None}
    return stored_def(found, sid)


async def read_defs(store: StateStore, wf: str, sids: Sequence[str]) -> list[str | None]:
    """The definitions of nodes ``sids`` of workflow ``wf`` (``None``: no such node), as
    :func:`stored_def` finds them, in one read."""
    per_node = [def_fields(sid) for sid in sids]
    values = await store.read(wf, [f for fields in per_node for f in fields])
    out, at = [], 0
    for sid, fields in zip(sids, per_node, strict=True):
        out.append(def_value(sid, values[at : at + len(fields)]))
        at += len(fields)
    return out


def lazily_queued(
    lazy: str | None, qend: str | None, scanned: str | None, ahead: str | None
) -> int:
    """A swarm's items queued past its cursor, not on its queue's zset (``lazy`` ``"1"``:
    its items from the cursor ``scanned`` to ``qend`` count as queued, but for the
    ``ahead`` ones queued or started on their own)."""
    if lazy != "1":
        return 0
    return max(int(qend or 0) - int(scanned or 0) - int(ahead or 0), 0)


def aux(kind: str, sid: str) -> str:
    """The name of an auxiliary key of node ``sid`` (``items``, ``queue`` ...)."""
    return f"{kind}:{sid}"


STATS_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
"""Upper bounds (ms) of the statistics' duration histogram: field ``h<i>`` counts
durations <= ``STATS_BOUNDS_MS[i-1]``, ``h0`` longer ones (``STATS_BOUNDS`` in the script)."""
STATS_MINUTES = 60
"""Minutes of statistics kept (each bucket expires an hour after its minute)."""


def unpack_record(text: str, key: str) -> dict[str, str]:
    """The parts of run record ``text`` of node ``key`` (``<wf>.<sid>``) that are present,
    by name, its run id expanded (see COMPACT RUN IDS in ``transitions.lua``)."""
    parts = dict(zip(RECORD_PARTS, text.split("|", len(RECORD_PARTS) - 1), strict=False))
    run_id = parts.get(RUN_ID, "")
    if run_id.startswith("~"):
        parts[RUN_ID] = run_id[1:] if run_id.startswith("~~") else f"{key}.{run_id[1:]}"
    return {name: part for name, part in parts.items() if part}


def state_fields(sid: str, names: Sequence[str]) -> list[str]:
    """The hash fields holding records ``names`` of node ``sid`` in either layout: the
    plain fields, then the run record when any name is one of its parts (read them in
    one call, then decode with :func:`state_values`)."""
    fields = [of(sid, name) for name in names]
    if any(name in RECORD_PARTS for name in names):
        fields.append(of(sid, RECORD))
    return fields


def state_values(names: Sequence[str], values: Sequence[str | None], key: str) -> list[str | None]:
    """Records ``names`` of node ``key`` (``<wf>.<sid>``) from the values read for
    :func:`state_fields`: a part of the run record, when the node has one, else the plain
    field."""
    if len(values) == len(names) or values[len(names)] is None:
        return list(values[: len(names)])
    record = unpack_record(values[len(names)] or "", key)
    return [
        record.get(name) if name in RECORD_PARTS else value
        for name, value in zip(names, values, strict=False)
    ]


async def read_node(store: StateStore, wf: str, sid: str, names: Sequence[str]) -> list[str | None]:
    """Records ``names`` of node ``sid`` of workflow ``wf``, in either layout, in one read."""
    (values,) = await read_nodes(store, wf, [sid], names)
    return values


def node_state(
    records: Mapping[str, str], wf: str, sid: str, names: Sequence[str]
) -> list[str | None]:
    """Records ``names`` of node ``sid`` from the fields of workflow ``wf`` already read,
    in either layout."""
    values = [records.get(f) for f in state_fields(sid, names)]
    return state_values(names, values, join_key(wf, sid))


async def read_nodes(
    store: StateStore, wf: str, sids: Sequence[str], names: Sequence[str]
) -> list[list[str | None]]:
    """Records ``names`` of each node of ``sids`` (in order), in either layout, in one read."""
    per_node = [state_fields(sid, names) for sid in sids]
    values = await store.read(wf, [f for fields in per_node for f in fields])
    out, at = [], 0
    for sid, fields in zip(sids, per_node, strict=True):
        out.append(state_values(names, values[at : at + len(fields)], join_key(wf, sid)))
        at += len(fields)
    return out
