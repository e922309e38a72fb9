"""Priorities and delays (:class:`mageflow.Options`): honoured on every backend."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from mageflow.models.config import SwarmConfig
from mageflow.models.options import Options
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns

SLACK = 0.01
"""Clock rounding (the engine keeps milliseconds)."""


class OptionsContract(ContractBase):
    """Priority orders a swarm's queue; a delay or start time holds a node until then."""

    async def test_priority_orders_queued_items(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        priorities = [0, 5, 9, 5, 0, 7]
        items = [
            await app.sign("contract.echo", id=i, mageflow_options=Options(priority=p))
            for i, p in enumerate(priorities)
        ]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
        await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        started = [m["id"] for m in await harness.probe.events(ns, "echo")]
        assert started == [2, 5, 1, 3, 0, 4], "higher priority first, FIFO within one"

    async def test_registered_priority_is_the_default_and_a_signature_overrides_it(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        items = [
            await app.sign("contract.echo", id=0),
            await app.sign("contract.urgent", id=1, mageflow_options=Options(priority=0)),
            await app.sign("contract.echo", id=2),
            await app.sign("contract.urgent", id=3),  # registered with priority 8
        ]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
        await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        assert [m["id"] for m in await harness.probe.events(ns, "echo")] == [3, 0, 1, 2]

    async def test_delayed_task_starts_after_its_delay(self, harness: ContractHarness) -> None:
        ns = _ns()
        delay = 0.8
        sig = await harness.app.sign(
            "contract.clock", ns=ns, mageflow_options=Options(delay=timedelta(seconds=delay))
        )
        before = time.time()
        ran_at = await sig.aio_run({}, timeout=harness.timeout)
        assert ran_at >= before + delay - SLACK, f"ran {ran_at - before:.3f} s after the run"

    async def test_delayed_chain_step_waits_after_the_previous_step(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        delay = 0.6
        wf = await app.chain(
            [
                await app.sign("contract.clock", id=0),
                await app.sign("contract.clock", id=1, mageflow_options=Options(delay=delay)),
            ],
            ns=ns,
        )
        await wf.aio_run({}, timeout=harness.timeout)
        first, second = await harness.probe.events(ns, "clock")
        assert second["at"] - first["at"] >= delay - SLACK

    async def test_start_at_holds_a_swarm_until_then(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        at = datetime.now(timezone.utc) + timedelta(seconds=0.8)
        sw = await app.swarm(
            [await app.sign("contract.clock", id=i) for i in range(3)],
            is_swarm_closed=True,
            mageflow_options=Options(start_at=at),
        )
        await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        runs = await harness.probe.events(ns, "clock")
        assert len(runs) == 3
        assert min(r["at"] for r in runs) >= at.timestamp() - SLACK
