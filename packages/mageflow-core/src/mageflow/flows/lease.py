"""The lease a running attempt holds on its task, so that a copy of the same run (a
replayed message, a reclaim from a frozen worker) does not run the user code again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from mageflow.errors import MageflowError

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime
    from mageflow.models.retry import Backoff

log = logging.getLogger("mageflow.worker")

MIN_WAIT = 0.05


def wait_for_lease(lease_until_ms: int, lease: float) -> float:
    """Seconds a copy waits before asking again: until the lease it met lapses, at least
    :data:`MIN_WAIT`, at most one ``lease``."""
    return min(max(lease_until_ms / 1000 - time.time(), MIN_WAIT), lease)


async def _renew_forever(mf: Runtime, key: str, run_id: str, lease: float) -> None:
    while True:
        await asyncio.sleep(lease / 3)
        try:
            if not await mf.engine.renew(key, run_id, lease):
                log.warning("%s: run %s no longer holds the task; lease not renewed", key, run_id)
                return
        except (MageflowError, OSError) as exc:  # a store outage: try again next period
            log.warning("%s: cannot renew the lease of run %s: %s", key, run_id, exc)


@contextlib.asynccontextmanager
async def renewed(mf: Runtime, key: str, run_id: str) -> AsyncIterator[None]:
    """Renew the lease the start transition gave run ``run_id`` every third of
    ``mf.lease`` while the body runs (the attempt's user code and its finish)."""
    renewer = asyncio.create_task(_renew_forever(mf, key, run_id, mf.lease))
    try:
        yield
    finally:
        while not renewer.done():  # cancel until done (see ShutdownSafeReceiver)
            renewer.cancel()
            await asyncio.wait({renewer}, timeout=0.1)


def retry_hold(backoff: Backoff | None, attempt: int) -> float:
    """Seconds a failed attempt ``attempt`` that will be retried keeps its lease: the
    shortest backoff before retry ``attempt`` (jitter cannot make the retry due sooner)."""
    return 0.0 if backoff is None else backoff.bounds(attempt)[0]


async def release(mf: Runtime, key: str, run_id: str, hold: float = 0.0) -> None:
    """Give up the lease of a failed attempt that will be retried, all but ``hold``
    seconds (:func:`retry_hold`): the retry (the same run) starts when its backoff is due,
    and so does a copy of the failed delivery itself, which a worker that died before
    acknowledging it leaves to be redelivered at once, without the retry's due time. If
    this fails, the retry waits for the lease to lapse."""
    try:
        await mf.engine.renew(key, run_id, hold)
    except (MageflowError, OSError) as exc:
        log.warning("%s: cannot release the lease of run %s: %s", key, run_id, exc)
