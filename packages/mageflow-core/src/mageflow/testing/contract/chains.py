"""Chains: result passing, failure handling."""

from __future__ import annotations

import pytest

from mageflow.errors import TaskFailedError
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class ChainContract(ContractBase):
    """Chains: result passing, failure handling."""

    async def test_chain_passes_results_and_calls_success_once(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [
                await app.sign("contract.add", ns=ns),
                await app.sign("contract.double", ns=ns),
                await app.sign("contract.double", ns=ns),
            ],
            name="pipeline",
            success=done,
        )
        assert await wf.aio_run({"ns": ns, "x": 1, "y": 2}, timeout=harness.timeout) == 12
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == 12
        assert await harness.probe.events(ns, "double") == [3, 6]
        state = await wf.get_state()
        assert state.name == "pipeline"
        assert state.status is SignatureStatus.DONE

    async def test_failing_step_stops_chain_and_fires_both_error_callbacks(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        step_err = await app.sign("contract.collect", ns=ns, tag="step-err")
        chain_err = await app.sign("contract.collect", ns=ns, tag="chain-err")
        chain_ok = await app.sign("contract.collect", ns=ns, tag="chain-ok")
        wf = await app.chain(
            [
                await app.sign("contract.echo", ns=ns),
                await app.sign(
                    "contract.fail", ns=ns, reason="step broke", error_callbacks=[step_err]
                ),
                await app.sign("contract.echo", ns=ns, never=True),
            ],
            success=chain_ok,
            error=chain_err,
        )
        with pytest.raises(TaskFailedError):
            await wf.aio_run({"ns": ns, "first": 1}, timeout=harness.timeout)
        (s,) = await self.events(harness, ns, "step-err", 1)
        (c,) = await self.events(harness, ns, "chain-err", 1)
        assert s["mageflow_error"]["message"] == "step broke"
        assert c["mageflow_error"]["message"] == "step broke"
        assert c["first"] == 1, "the chain's error callback gets the chain's message"
        assert len(await harness.probe.events(ns, "echo")) == 1
        assert await harness.probe.events(ns, "chain-ok") == []
