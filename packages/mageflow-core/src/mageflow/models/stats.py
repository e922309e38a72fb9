"""What ``mf.stats()`` and ``mageflow stats`` report."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TaskStats(BaseModel):
    """One task name's counts over the window. Durations run from a task's first attempt
    to its final outcome (retries included); ``p95_s`` is estimated from a fixed
    histogram (exact to its bucket's bounds)."""

    started: int = 0
    """Attempts started (retries included)."""
    retried: int = 0
    """Attempts after the first."""
    done: int = 0
    failed: int = 0
    """Final failures (after the last retry)."""
    mean_s: float | None = None
    p95_s: float | None = None


class Stats(BaseModel):
    """Statistics over the last ``window_s`` seconds (whole minutes), from the per-minute
    buckets the transitions keep."""

    window_s: int
    since: datetime
    tasks: dict[str, TaskStats] = Field(default_factory=dict)
    """By task name."""
    workflows: dict[str, int] = Field(default_factory=dict)
    """Top-level workflows by event: ``started``, ``done``, ``failed``, ``canceled``."""
