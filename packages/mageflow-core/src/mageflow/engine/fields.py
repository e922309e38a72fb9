"""Names of the records the engine keeps per node (see the glossary at the top of
``transitions.lua``). Python code reads and writes them only through these names."""

from __future__ import annotations

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

N_DEPS = "n_deps"
NODES = "nodes"
SOURCES = "sources"
SINKS = "sinks"

TERMINAL = frozenset({"done", "failed", "canceled", "skipped"})
HOLDING = frozenset({"suspended", "interrupted"})


def of(sid: str, name: str) -> str:
    """The hash field of record ``name`` of node ``sid``."""
    return f"{sid}:{name}"


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
