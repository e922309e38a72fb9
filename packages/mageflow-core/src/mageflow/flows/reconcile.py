"""The reconciler: re-sends what the engine dispatched and nobody started.

Every dispatch is recorded by the transition that makes it (``H:sent``, same hash tag),
so a publish lost to a client crash, a broker blip or a dropped message is found here.
Any worker runs a sweep loop, no leader needed: a sweeper leases due workflows from the
``live`` index (one script call on that key), reconciles each (one script call on its own
hash tag: Cluster-safe) and sets when to look again. Re-sends of one task back off
(doubling per re-send), so a long broker backlog does not multiply messages; a duplicate
that arrives anyway is dropped by the receiving side's dedupe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from mageflow.errors import MageflowError
from mageflow.flows.publish import publish

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime

log = logging.getLogger("mageflow.reconcile")

BATCH = 100


async def sweep(rt: Runtime) -> int:
    """One pass over up to ``BATCH`` workflows that are due; returns how many tasks were
    re-sent."""
    return (await _sweep(rt))[0]


async def _sweep(rt: Runtime) -> tuple[int, list[str]]:
    engine = rt.engine
    lease = max(engine.resend_after, 5.0)
    wfs = await engine.claim_due(lease, BATCH)
    resent = 0
    later: dict[str, float] = {}
    drop: list[str] = []
    for wf in wfs:
        r = await engine.reconcile(wf)
        if r.publishes:
            log.warning(
                "re-sending %d task(s) of workflow %s that never started (%s ...)",
                len(r.publishes),
                wf,
                r.publishes[0].key,
            )
            try:
                await publish(rt, r.publishes)
            except MageflowError as exc:
                log.warning("reconcile of %s: %s", wf, exc)
            resent += len(r.publishes)
        if r.idle:
            drop.append(wf)
        else:
            recheck = int(time.time() * 1000 + engine.resend_after * 1000)
            later[wf] = min(r.next_due_ms if r.next_due_ms is not None else math.inf, recheck)
    await rt.store.set_live(later)
    await rt.store.drop_live(drop)
    return resent, wfs


async def sweep_due(rt: Runtime, stop: asyncio.Event | None = None) -> int:
    """Sweep until what was due when it began is done: each workflow is leased once per
    call, so even ``resend_after=0`` (everything always due) ends. Returns re-sends."""
    total = 0
    seen: set[str] = set()
    for _ in range(1000):
        if stop is not None and stop.is_set():
            break
        before = len(seen)
        resent, claimed = await _sweep(rt)
        seen.update(claimed)
        total += resent
        if len(claimed) < BATCH or len(seen) == before:
            break
        await asyncio.sleep(0)  # never starve the event loop (in-process store)
    return total


def tick_of(resend_after: float) -> float:
    """How often a worker looks for due workflows (a delay another process made wait is
    released at most this late)."""
    return min(max(resend_after / 4, 0.05), 1.0)


class Alarm:
    """Wakes this process's sweep loop early: at the time a transition made here delayed a
    node to (so a delay the engine holds is released on time, not at the next tick)."""

    def __init__(self) -> None:
        self.at_ms: int | None = None
        self.rang = asyncio.Event()

    def set(self, at_ms: int) -> None:
        if self.at_ms is None or at_ms < self.at_ms:
            self.at_ms = at_ms
            self.rang.set()

    async def sleep(self, stop: asyncio.Event, tick: float) -> None:
        """Until ``stop``, the alarm's time, or ``tick`` seconds, whichever comes first."""
        self.rang.clear()
        timeout = tick
        if self.at_ms is not None:
            timeout = min(tick, max(self.at_ms / 1000 - time.time(), 0.0) + 0.002)
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.rang.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.at_ms is not None and self.at_ms <= time.time() * 1000:
            self.at_ms = None


async def run_until(rt: Runtime, stop: asyncio.Event, alarm: Alarm | None = None) -> None:
    """Sweep until ``stop`` is set; store or broker outages are logged and ridden out.
    (A stop event, not only cancellation: a client library may swallow a cancel.)"""
    tick = tick_of(rt.engine.resend_after)
    alarm = alarm or Alarm()
    while not stop.is_set():
        try:
            await sweep_due(rt, stop)
        except Exception:
            log.exception("reconciler sweep failed; retrying in %.1f s", tick)
        await alarm.sleep(stop, tick)
