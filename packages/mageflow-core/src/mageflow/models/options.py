"""How and when a signature is dispatched: priority and delay (:class:`Options`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from mageflow.errors import InvalidOptionsError

PRIORITY_MIN = 0
PRIORITY_MAX = 9
DEFAULT_QUEUE = "default"
"""The queue of tasks routed nowhere in particular (every worker serves it by default)."""
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_queue(name: object) -> str:
    """``name`` if it can name a queue (1-64 letters, digits, ``_ . -``); raises
    :class:`InvalidOptionsError` otherwise."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidOptionsError(
            f"a queue name is 1 to 64 letters, digits, '_', '.' or '-', got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Options:
    """Dispatch options of one task (``@mf.task(priority=..., delay=...)`` sets a task's
    defaults) or one signature (``sign(..., mageflow_options=Options(...))`` overrides
    them; chains and swarms take them too).

    - ``priority`` (0..9, higher first; default 0): among the queued items of a swarm,
      the higher priority starts first, first queued first within a priority. Backends
      with priorities (Hatchet) also receive it.
    - ``delay`` (seconds or a ``timedelta``): the node starts this long after it becomes
      due (a chain step: after the previous step finished).
    - ``start_at`` (an aware ``datetime``): the node starts no earlier than this.
    - ``queue`` (a name): only workers serving this queue run the task
      (``mageflow worker app:mf --queues gpu``); without one it goes to ``default``.
    """

    priority: int | None = None
    delay: float | timedelta | None = None
    start_at: datetime | None = None
    queue: str | None = None

    def __post_init__(self) -> None:
        p = self.priority
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int) or not PRIORITY_MIN <= p <= PRIORITY_MAX
        ):
            raise InvalidOptionsError(
                f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
                f"(higher starts first), got {p!r}"
            )
        if self.queue is not None:
            check_queue(self.queue)
        if self.delay is not None and self.start_at is not None:
            raise InvalidOptionsError("give delay= or start_at=, not both")
        seconds = self.delay_seconds
        if seconds is not None and (not math.isfinite(seconds) or seconds < 0):
            raise InvalidOptionsError(
                f"delay must be a finite number of seconds >= 0, got {seconds!r}"
            )
        if self.start_at is not None and (
            not isinstance(self.start_at, datetime) or self.start_at.tzinfo is None
        ):
            raise InvalidOptionsError(
                "start_at must be a timezone-aware datetime, e.g. datetime.now(timezone.utc)"
            )

    @property
    def delay_seconds(self) -> float | None:
        if self.delay is None:
            return None
        if isinstance(self.delay, timedelta):
            return self.delay.total_seconds()
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, float)):
            raise InvalidOptionsError(
                f"delay must be seconds (a number) or a timedelta, got {self.delay!r}"
            )
        return float(self.delay)

    def over(self, defaults: Options | None) -> Options:
        """These options, with what they leave unset taken from ``defaults``."""
        if defaults is None:
            return self
        timing = self.delay is not None or self.start_at is not None
        return Options(
            priority=self.priority if self.priority is not None else defaults.priority,
            delay=self.delay if timing else defaults.delay,
            start_at=self.start_at if timing else defaults.start_at,
            queue=self.queue if self.queue is not None else defaults.queue,
        )
