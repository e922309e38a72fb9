"""The lease a running attempt holds on its task, so that a copy of the same run (a
replayed message, a reclaim from a frozen worker) does not run the user code again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from mageflow.errors import MageflowError

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime
    from mageflow.models.retry import Backoff

log = logging.getLogger("mageflow.worker")

MIN_WAIT = 0.05
FIRST_START_AFTER = 0.05
"""Seconds a first delivery runs before its start is recorded (see :func:`renewed`): a
task that ends sooner costs one store round trip, and a longer one shows as running
(and holds its lease) from then on."""


def wait_for_lease(lease_until_ms: int, lease: float) -> float:
    """Seconds a copy waits before asking again: until the lease it met lapses, at least
    :data:`MIN_WAIT`, at most one ``lease``."""
    return min(max(lease_until_ms / 1000 - time.time(), MIN_WAIT), lease)


async def _take_start(
    mf: Runtime, key: str, run_id: str, task_name: str, lease: float, began_ms: int | None
) -> bool | None:
    """The start of a first delivery that runs without one (see :func:`renewed`):
    ``True`` once recorded, ``False`` to try again (a store outage), ``None`` when refused
    (the user code runs on; its finish then changes nothing)."""
    try:
        outcome = await mf.engine.start(key, run_id, task_name, lease, began_ms=began_ms)
    except (MageflowError, OSError) as exc:  # a store outage: try again next period
        log.warning("%s: cannot record the start of run %s yet: %s", key, run_id, exc)
        return False
    if outcome.action == "redo":  # its own finish got there first: nothing to hold
        return None
    if outcome.action != "run":
        log.warning(
            "%s: run %s started without a start transition and is not the task's run (%s); "
            "what it returns will be discarded",
            key,
            run_id,
            outcome.action,
        )
        return None
    return True


def _first_period(mf: Runtime, lease: float, unstarted: str | None) -> float:
    """Seconds before the first action of a delivery's renewer: a first delivery's start
    is taken well before the reconciler could re-send its message (its age at the worker
    is below half of ``resend_after``); a started one renews every third of its lease."""
    if unstarted is None:
        return lease / 3
    return min(FIRST_START_AFTER, lease / 3, mf.engine.resend_after / 4)


async def _renew_forever(
    mf: Runtime,
    key: str,
    run_id: str,
    lease: float,
    unstarted: str | None = None,
    began_ms: int | None = None,
) -> None:
    """The renewer of one delivery, from the end of its first period (:func:`renewed`)."""
    while True:
        if unstarted is not None:
            taken = await _take_start(mf, key, run_id, unstarted, lease, began_ms)
            if taken is None:
                return  # not this run's task: nothing to renew
            if taken:
                unstarted = None
            await asyncio.sleep(_first_period(mf, lease, unstarted))
            continue
        try:
            if not await mf.engine.renew(key, run_id, lease):
                log.warning("%s: run %s no longer holds the task; lease not renewed", key, run_id)
                return
        except (MageflowError, OSError) as exc:  # a store outage: try again next period
            log.warning("%s: cannot renew the lease of run %s: %s", key, run_id, exc)
        await asyncio.sleep(lease / 3)


class _Renewal:
    """What renews one delivery's lease (:func:`renewed`): a timer until its first period
    has passed (most tasks end sooner, and then cost no task, no sleep and no store
    call), then a task."""

    __slots__ = ("args", "task", "timer")

    def __init__(
        self,
        mf: Runtime,
        key: str,
        run_id: str,
        lease: float,
        unstarted: str | None,
        began_ms: int | None,
    ) -> None:
        self.args = (mf, key, run_id, lease, unstarted, began_ms)
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def _fire(self) -> None:
        self.timer = None
        self.task = asyncio.get_running_loop().create_task(_renew_forever(*self.args))

    async def __aenter__(self) -> None:
        mf, _, _, lease, unstarted, _ = self.args
        self.timer = asyncio.get_running_loop().call_later(
            _first_period(mf, lease, unstarted), self._fire
        )

    async def __aexit__(self, *_exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task = self.task
        while task is not None and not task.done():  # cancel until done (ShutdownSafeReceiver)
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)


def renewed(
    mf: Runtime,
    key: str,
    run_id: str,
    unstarted: str | None = None,
    began_ms: int | None = None,
) -> contextlib.AbstractAsyncContextManager[None]:
    """Renew the lease the start transition gave run ``run_id`` every third of
    ``mf.lease`` while the body runs (the attempt's user code and its finish).
    ``unstarted`` (the task name): a first delivery that runs without a start transition
    takes its start (and lease) once it has run :data:`FIRST_START_AFTER` seconds (at
    most a third of ``mf.lease`` and a quarter of ``resend_after``), so it shows as
    running, and the reconciler never re-sends a task that is running; as of
    ``began_ms``, when its user code began."""
    return _Renewal(mf, key, run_id, mf.lease, unstarted, began_ms)


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
