"""Transitions a worker must record before it moves on: retried through a store outage."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina

from mageflow import faults
from mageflow.errors import StoreUnavailableError

log = logging.getLogger("mageflow.worker")

T = TypeVar("T")

WAIT_MAX = 2.0
"""Longest pause (s) between two attempts while the store is unreachable."""


async def until_recorded(
    op: str, task_name: str, key: str, transition: Callable[[], Awaitable[T]]
) -> T:
    """Run ``transition`` (the ``op`` of a delivery of ``task_name`` for ``key``) until
    the store answers; its other errors propagate at once.

    A delivery whose start or finish is not recorded must not be acknowledged: the worker
    keeps holding it (a stream broker keeps renewing its claim) and retries with capped
    exponential backoff, however long the outage. If the worker dies meanwhile, the
    broker redelivers the message. Every transition is idempotent, so a retry of one
    that was applied but whose reply was lost changes nothing.
    """

    async def once() -> T:
        if faults.active():
            try:
                faults.fail(faults.STORE, f"{op}:{task_name}")
            except ConnectionError as exc:
                raise StoreUnavailableError(str(exc)) from exc
        return await transition()

    try:
        return await once()
    except StoreUnavailableError as exc:
        log.warning("%s of %s: store unreachable (%s); retrying until it is back", op, key, exc)
    async for attempt in stamina.retry_context(
        on=StoreUnavailableError, attempts=None, timeout=None, wait_initial=0.05, wait_max=WAIT_MAX
    ):
        with attempt:
            result = await once()
    log.warning("%s of %s: recorded after the store came back", op, key)
    return result
