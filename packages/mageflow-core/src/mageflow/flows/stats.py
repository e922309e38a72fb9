"""Reading the statistics the transitions keep (per-minute buckets, see ``STATISTICS`` in
``transitions.lua``): at most :data:`~mageflow.engine.fields.STATS_MINUTES` hashes, no scan."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timezone

from mageflow.engine import fields as F
from mageflow.errors import ConfigurationError
from mageflow.models.stats import Stats, TaskStats
from mageflow.store.base import StateStore
from mageflow.store.connect import redact_url

COUNTERS = ("started", "retried", "done", "failed")


def p95_of(histogram: dict[int, int]) -> float | None:
    """The 95th percentile (s) of a duration histogram (bucket index -> count; 0 is the
    overflow bucket), interpolated inside its bucket."""
    n = sum(histogram.values())
    if n == 0:
        return None
    want, seen = 0.95 * n, 0
    bounds = F.STATS_BOUNDS_MS
    for i in [*range(1, len(bounds) + 1), 0]:
        count = histogram.get(i, 0)
        if count and seen + count >= want:
            if i == 0:
                return bounds[-1] / 1000
            low = bounds[i - 2] if i > 1 else 0
            return (low + (bounds[i - 1] - low) * (want - seen) / count) / 1000
        seen += count
    return bounds[-1] / 1000


async def read_stats(store: StateStore, window_s: float = 900) -> Stats:
    """Counts and durations of the last ``window_s`` seconds (rounded up to whole
    minutes, at most an hour). Raises :class:`ConfigurationError` for a bad window."""
    if not 0 < window_s <= F.STATS_MINUTES * 60:
        raise ConfigurationError(
            f"stats window must be in (0, {F.STATS_MINUTES * 60}] seconds, got {window_s!r}"
        )
    base = store.stats_key
    if base is None:
        raise ConfigurationError(
            f"statistics are off for the store at {redact_url(store.url)}: on a Redis Cluster a "
            "transition touches its workflow's slot only, and the statistics would be "
            "another one; keep the state on a single Redis (or use the in-process store) "
            "for mf.stats() and `mageflow stats`, or use the Prometheus metrics plugin"
        )
    minutes = -(-int(window_s) // 60)
    now_min = int(time.time() // 60)
    first = now_min - minutes + 1
    buckets = await store.read_hashes([f"{base}:{m}" for m in range(first, now_min + 1)])
    raw: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    workflows: defaultdict[str, int] = defaultdict(int)
    for bucket in buckets:
        for field, value in bucket.items():
            kind, _, rest = field.partition(":")
            if kind == "w":
                workflows[rest] += int(value)
            elif kind == "t":
                name, _, counter = rest.rpartition(":")
                raw[name][counter] += int(value)
    tasks: dict[str, TaskStats] = {}
    for name, c in sorted(raw.items()):
        finished = c["done"] + c["failed"]
        hist = {int(k[1:]): v for k, v in c.items() if k.startswith("h") and k[1:].isdigit()}
        tasks[name] = TaskStats(
            **{k: c[k] for k in COUNTERS},
            mean_s=c["ms"] / finished / 1000 if finished else None,
            p95_s=p95_of(hist),
        )
    return Stats(
        window_s=minutes * 60,
        since=datetime.fromtimestamp(first * 60, timezone.utc),
        tasks=tasks,
        workflows=dict(workflows),
    )
