"""Workflow context: ``chain(..., **kw)`` / ``swarm(..., **kw)`` reach every node below."""

from __future__ import annotations

from mageflow.models.config import SwarmConfig
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class ContextContract(ContractBase):
    """Workflow context: bound once, received by every step, item and callback."""

    async def test_chain_context_reaches_every_step_and_callback(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", tag="done")
        wf = await app.chain(
            ["contract.echo", "contract.echo", await app.sign("contract.echo", tenant="step")],
            success=done,
            ns=ns,
            tenant="acme",
            request_id="r-1",
        )
        await wf.aio_run({"order": 7}, timeout=harness.timeout)
        first, second, third = await harness.probe.events(ns, "echo")
        assert first == {"tenant": "acme", "request_id": "r-1", "order": 7}
        assert second["tenant"] == "acme" and second["request_id"] == "r-1"
        assert "order" not in second, "later steps get the previous result, not the message"
        assert third["tenant"] == "step", "a step's own kwargs win over the context"
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["tenant"] == "acme"

    async def test_context_reaches_nested_swarm_items_below_their_kwargs(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        inner = await app.chain(["contract.echo", "contract.echo"], stage="inner")
        items = [await app.sign("contract.echo", id=0), inner]
        items.append(await app.sign("contract.echo", id=2, tenant="own"))
        sw = await app.swarm(
            items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True, tenant="acme"
        )
        outer = await app.chain([sw], ns=ns)
        await outer.aio_run({}, timeout=harness.timeout)
        seen = await harness.probe.events(ns, "echo")
        assert len(seen) == 4
        by_id = {m.get("id"): m for m in seen if "id" in m and "mageflow_results" not in m}
        assert by_id[0]["tenant"] == "acme"
        assert by_id[2]["tenant"] == "own"
        nested = [m for m in seen if m.get("stage") == "inner"]
        assert len(nested) == 2, f"both steps of the nested chain get its context: {seen}"
        assert all(m["tenant"] == "acme" for m in nested)
