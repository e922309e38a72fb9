"""Workflows computed at run time, and cancel of one node inside a workflow."""

from __future__ import annotations

import asyncio

from mageflow.models.config import SwarmConfig
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class DynamicContract(ContractBase):
    """A task may return a workflow to run in its place; any node can be canceled."""

    async def test_task_returns_a_capped_swarm_computed_from_its_input(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        on_ok = await app.sign("contract.collect", ns=ns, tag="fanout-ok")
        fan = await app.sign("contract.fanout", n=50, cap=5, success_callbacks=[on_ok])
        wf = await app.chain([fan, await app.sign("contract.total", ns=ns)])
        assert await wf.aio_run({"ns": ns}, timeout=harness.timeout) == sum(range(50))
        assert await harness.probe.events(ns, "fanout") == [50], "the task's code ran once"
        assert sorted(await harness.probe.events(ns, "slow-done")) == list(range(50))
        assert await harness.probe.max_running(ns) <= 5
        assert await fan.wait(timeout=harness.timeout) == list(range(50))
        assert len(await self.events(harness, ns, "fanout-ok", 1)) == 1

    async def test_cancel_one_swarm_item(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        blocked = await app.sign("contract.block", id="b")
        items = [blocked, *[await app.sign("contract.echo", id=i) for i in range(3)]]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=4), is_swarm_closed=True)
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await blocked.cancel()
        assert await blocked.get_status() is SignatureStatus.CANCELED
        result = await sw.wait(timeout=harness.timeout)
        assert result[0]["mageflow_error"]["type"] == "Canceled"
        assert [r["id"] for r in result[1:]] == [0, 1, 2]
        await harness.probe.set_flag(ns, "release")
        await asyncio.sleep(harness.settle)
        assert await blocked.get_status() is SignatureStatus.CANCELED, "its late finish is dropped"
