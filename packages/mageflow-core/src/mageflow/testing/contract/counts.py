"""A swarm's counts stay true after interrupt and cancel (``mageflow status`` shows them)."""

from __future__ import annotations

import asyncio

from mageflow.flows.handles import SwarmSignature
from mageflow.models.config import SwarmConfig
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class CountsContract(ContractBase):
    """Swarm item counts after lifecycle operations."""

    async def _blocked_swarm(self, h: ContractHarness, ns: str, n: int) -> SwarmSignature:
        items = [await h.app.sign("contract.block", id=i) for i in range(n)]
        sw = await h.app.swarm(items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(h, ns, 2)
        return sw

    async def test_interrupted_swarm_counts_held_items_not_running(
        self, harness: ContractHarness
    ) -> None:
        """Interrupted while two items run: with ``cancel_running`` they are taken back;
        without it they run to their end, which the held swarm counts on resume. Either
        way they count as held, not running, until resume."""
        ns = _ns()
        sw = await self._blocked_swarm(harness, ns, 4)
        await sw.interrupt()
        if harness.app.backend.capabilities.cancel_running:
            counts = (await sw.get_state()).counts
            assert (counts["running"], counts.get("held")) == (0, 2), counts
        await harness.probe.set_flag(ns, "release")
        if not harness.app.backend.capabilities.cancel_running:
            await self.events(harness, ns, "block-done", 2)
        counts = (await sw.get_state()).counts
        assert (counts["running"], counts.get("held"), counts["queued"]) == (0, 2, 2), counts
        await sw.resume()
        assert len(await sw.wait(timeout=harness.timeout)) == 4
        counts = (await sw.get_state()).counts
        assert counts["done"] == 4 and counts["running"] == 0 and "held" not in counts

    async def test_canceled_swarm_counts_nothing_queued_or_running(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        sw = await self._blocked_swarm(harness, ns, 5)
        await sw.cancel()
        await harness.probe.set_flag(ns, "release")
        await asyncio.sleep(harness.settle)
        state = await sw.get_state()
        assert state.status is SignatureStatus.CANCELED
        assert state.counts["queued"] == 0 and state.counts["running"] == 0, state.counts
        assert state.counts["canceled"] == 5, state.counts
