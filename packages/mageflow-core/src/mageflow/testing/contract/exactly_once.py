"""Duplicate deliveries and the crash window between a transition and its publishes."""

from __future__ import annotations

import asyncio
import json

import pytest

from mageflow import faults
from mageflow.backend.base import HEADER_KEY, OutgoingTask
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class ExactlyOnceContract(ContractBase):
    """Duplicate deliveries and the crash window between a transition and its publishes."""

    async def _republish(self, h: ContractHarness, key: str, task_name: str) -> None:
        """Publish the payload a signature already received once more (new run id), as
        a broker duplicate or a re-issued publish would."""
        payload = await h.app.engine.payload(key)
        assert payload is not None
        await h.app.backend.publish(OutgoingTask(task_name, json.loads(payload), {HEADER_KEY: key}))

    async def test_duplicate_delivery_changes_nothing(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [
                await app.sign("contract.echo", step=1),
                await app.sign("contract.echo", ns=ns, step=2),
            ],
            success=done,
        )
        await wf.aio_run({"ns": ns}, timeout=harness.timeout)
        state = await wf.get_state()
        for step in state.children:
            await self._republish(harness, step, "contract.echo")
        await asyncio.sleep(harness.settle)
        assert len(await self.events(harness, ns, "echo", 2)) == 2
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_duplicate_swarm_item_counts_once(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        sw = await app.swarm(
            [await app.sign("contract.block", id=0), await app.sign("contract.echo", id=1)],
            success_callbacks=[done],
        )
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        state = await sw.get_state()
        echo_key = state.children[1]

        async def echo_done() -> bool:
            return len(await harness.probe.events(ns, "echo")) >= 1

        await harness.probe.wait_until(echo_done, harness.timeout, "the echo item")
        await asyncio.sleep(harness.settle)
        await self._republish(harness, echo_key, "contract.echo")
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "done") == [], "a duplicate must not complete it"
        await harness.probe.set_flag(ns, "release")
        assert len(await sw.wait(timeout=harness.timeout)) == 2
        assert len(await self.events(harness, ns, "done", 1)) == 1
        assert len(await harness.probe.events(ns, "echo")) == 1

    async def test_crash_between_transition_and_publish(self, harness: ContractHarness) -> None:
        """The worker dies after storing "step 1 done" and before publishing step 2: the
        redelivered step 1 must re-issue step 2 without running step 1's code again."""
        if harness.fault_dir is None or not harness.redelivers_after_crash:
            pytest.skip(f"backend {harness.app.backend.name!r} does not redeliver after a crash")
        assert harness.fault_dir is not None
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [await app.sign("contract.add", y=1), await app.sign("contract.double", ns=ns)],
            success=done,
        )
        faults.arm(harness.fault_dir, faults.AFTER_FINISH, "contract.add")
        assert await wf.aio_run({"ns": ns, "x": 1}, timeout=harness.timeout) == 4
        assert not (harness.fault_dir / f"{faults.AFTER_FINISH}__contract.add").exists(), (
            "the fault never fired"
        )
        assert len(await self.events(harness, ns, "add", 1)) == 1
        assert len(await self.events(harness, ns, "double", 1)) == 1
        assert len(await self.events(harness, ns, "done", 1)) == 1
