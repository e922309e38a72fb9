"""Transitions a worker must record before it moves on: retried through a store outage."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina

from mageflow.errors import StoreUnavailableError

log = logging.getLogger("mageflow.worker")

T = TypeVar("T")

WAIT_MAX = 2.0
"""Longest pause (s) between two attempts while the store is unreachable."""


async def until_recorded(what: str, transition: Callable[[], Awaitable[T]]) -> T:
    """Run ``transition`` until the store answers; its other errors propagate at once.

    A delivery whose start or finish is not recorded must not be acknowledged: the worker
    keeps holding it (a stream broker keeps renewing its claim) and retries with capped
    exponential backoff, however long the outage. If the worker dies meanwhile, the
    broker redelivers the message. Every transition is idempotent, so a retry of one
    that was applied but whose reply was lost changes nothing.
    """
    try:
        return await transition()
    except StoreUnavailableError as exc:
        log.warning("%s: the store is unreachable (%s); retrying until it is back", what, exc)
    async for attempt in stamina.retry_context(
        on=StoreUnavailableError, attempts=None, timeout=None, wait_initial=0.05, wait_max=WAIT_MAX
    ):
        with attempt:
            result = await transition()
    log.warning("%s: recorded after the store came back", what)
    return result
