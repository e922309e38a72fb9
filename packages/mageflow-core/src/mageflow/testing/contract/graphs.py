"""Dependency graphs and branches: readiness, skipping, results, nesting, lifecycle."""

from __future__ import annotations

import asyncio

import pytest

from mageflow.errors import TaskFailedError
from mageflow.flows.graph import GraphNode
from mageflow.flows.handles import Signature
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class GraphContract(ContractBase):
    """Dependency graphs and branches: readiness, skipping, results, nesting, lifecycle."""

    async def _graph_fails(self, h: ContractHarness, g: Signature, ns: str, says: str) -> None:
        """``g`` run with ``{"ns": ns}`` fails with ``GraphFailed`` saying ``says``; its
        error callback (tag ``err``) fires once with that error."""
        with pytest.raises(TaskFailedError) as info:
            await g.aio_run({"ns": ns}, timeout=h.timeout)
        assert info.value.error_type == "GraphFailed"
        assert says in (info.value.error_message or "")
        (got,) = await self.events(h, ns, "err", 1)
        assert got["mageflow_error"]["type"] == "GraphFailed"

    async def test_diamond_with_a_failed_optional_edge_still_runs_the_join(
        self, harness: ContractHarness
    ) -> None:
        """a -> b, a -> c (fails) -> d, where d requires b and takes c optionally: d runs
        with b's result and c's error, keyed by name; the graph succeeds once."""
        ns = _ns()
        app = harness.app
        ok = await app.sign("contract.collect", ns=ns, tag="ok")
        g = await app.graph(
            {
                "a": await app.sign("contract.add", x=1, y=2),
                "b": (await app.sign("contract.echo", id="b"), ["a"]),
                "c": GraphNode(await app.sign("contract.fail", reason="c broke"), ["a"]),
                "d": GraphNode("contract.echo", requires=["b"], optional=["c"]),
            },
            success_callbacks=[ok],
        )
        result = await g.aio_run({"ns": ns}, timeout=harness.timeout)
        deps = result["d"]["mageflow_results"]
        assert deps["b"]["mageflow_results"] == {"a": 3}, "b got a's result keyed by name"
        assert deps["c"]["mageflow_error"]["message"] == "c broke"
        (got,) = await self.events(harness, ns, "ok", 1)
        assert got["mageflow_results"] == result
        assert await harness.probe.events(ns, "add") == [[1, 2]]
        nodes = await g.nodes()
        assert await nodes["c"].get_status() is SignatureStatus.FAILED
        assert await g.get_status() is SignatureStatus.DONE

    async def test_required_failure_skips_the_downstream_subgraph(
        self, harness: ContractHarness
    ) -> None:
        """b fails: c (requires b) and d (requires c) end skipped and never run; the
        independent e runs; the graph fails once and its error callback fires once."""
        ns = _ns()
        app = harness.app
        err = await app.sign("contract.collect", ns=ns, tag="err")
        ok = await app.sign("contract.collect", ns=ns, tag="ok")
        never = await app.sign("contract.collect", ns=ns, tag="never")
        g = await app.graph(
            {
                "a": await app.sign("contract.echo", id="a"),
                "b": (await app.sign("contract.fail", reason="b broke"), ["a"]),
                "c": (await app.sign("contract.echo", id="c"), ["b"]),
                "d": (await app.sign("contract.echo", id="d"), ["c"]),
                "e": await app.sign("contract.slow", id="e"),
            },
            stop_after_n_failures=None,
            success_callbacks=[ok],
            error_callbacks=[never],
        )
        result = await g.aio_run({"ns": ns}, timeout=harness.timeout)
        assert result["e"] == "e"
        assert result["d"]["mageflow_error"]["type"] == "Skipped"
        nodes = await g.nodes()
        assert await nodes["c"].get_status() is SignatureStatus.SKIPPED
        assert await nodes["d"].get_status() is SignatureStatus.SKIPPED
        assert [e["id"] for e in await harness.probe.events(ns, "echo")] == ["a"]
        # the default budget: the first failure nobody tolerates fails the graph, once
        g2 = await app.graph(
            {
                "b": await app.sign("contract.fail", reason="b broke"),
                "c": (await app.sign("contract.echo", id="c2"), ["b"]),
            },
            error_callbacks=[err],
        )
        await self._graph_fails(harness, g2, ns, "b broke")
        assert await (await g2.nodes())["c"].get_status() is SignatureStatus.SKIPPED
        assert len(await harness.probe.events(ns, "ok")) == 1
        assert await harness.probe.events(ns, "never") == []

    async def test_branch_runs_the_case_its_selector_names(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        br = await app.branch(
            "contract.route",
            {
                "left": await app.sign("contract.echo", side="left"),
                "right": await app.sign("contract.echo", side="right"),
            },
            default=await app.sign("contract.echo", side="default"),
        )
        out = await br.aio_run({"ns": ns, "route": "right"}, timeout=harness.timeout)
        assert out["side"] == "right" and out["mageflow_results"] == "right"
        assert out["route"] == "right", "the chosen case gets the branch's message"
        cases = await br.cases()
        assert await cases["left"].get_status() is SignatureStatus.SKIPPED
        assert await cases[None].get_status() is SignatureStatus.SKIPPED
        # no case matches: the default runs
        br2 = await app.branch(
            "contract.route",
            {"left": await app.sign("contract.echo", side="left")},
            default=await app.sign("contract.echo", side="default"),
        )
        out2 = await br2.aio_run({"ns": ns, "route": "up"}, timeout=harness.timeout)
        assert out2["side"] == "default"
        assert sorted(e["side"] for e in await harness.probe.events(ns, "echo")) == [
            "default",
            "right",
        ]

    async def test_graph_nested_in_a_chain_with_a_swarm_and_a_branch_as_nodes(
        self, harness: ContractHarness
    ) -> None:
        """chain [add, graph{sw: swarm, br: branch, join requires both}, echo]: the
        graph's sources get add's result, the join gets theirs keyed by name."""
        ns = _ns()
        app = harness.app
        sw = await app.swarm(
            [await app.sign("contract.slow", id=i) for i in range(3)], is_swarm_closed=True
        )
        br = await app.branch("contract.route", {"go": await app.sign("contract.echo", side="go")})
        g = await app.graph(
            {
                "sw": sw,
                "br": br,
                "join": (await app.sign("contract.echo", id="join"), ["sw", "br"]),
            }
        )
        # a later chain step gets the chain's context (its kwargs), not its message
        wf = await app.chain([await app.sign("contract.add", x=1, y=1), g], ns=ns, route="go")
        out = await wf.aio_run({}, timeout=harness.timeout)
        deps = out["join"]["mageflow_results"]
        assert deps["sw"] == [0, 1, 2]
        assert deps["br"]["side"] == "go" and deps["br"]["mageflow_results"] == "go"
        assert await harness.probe.events(ns, "route") == ["go"]

    async def test_graph_concurrency_cap_and_failure_budget(self, harness: ContractHarness) -> None:
        assert harness.worker_slots >= 3, "the harness must offer >= 3 worker slots"
        ns = _ns()
        app = harness.app
        nodes = {f"n{i}": await app.sign("contract.slow", id=i, seconds=0.15) for i in range(6)}
        g = await app.graph(nodes, max_concurrency=2)
        assert await g.aio_run({"ns": ns}, timeout=harness.timeout) == {
            f"n{i}": i for i in range(6)
        }
        assert await harness.probe.max_running(ns) == 2
        # budget 2: the first failure does not stop the graph, the second does
        ns2 = _ns()
        err = await app.sign("contract.collect", ns=ns2, tag="err")
        failing = await app.graph(
            {
                "f1": await app.sign("contract.slow", id="f1", fail=True),
                "f2": await app.sign("contract.slow", id="f2", fail=True),
                **{f"o{i}": await app.sign("contract.slow", id=i) for i in range(4)},
            },
            max_concurrency=1,
            stop_after_n_failures=2,
            error_callbacks=[err],
        )
        await self._graph_fails(harness, failing, ns2, "2 node(s) failed")
        assert (await harness.probe.events(ns2, "slow-start"))[:2] == ["f1", "f2"]

    async def test_suspended_graph_starts_no_ready_node_until_resumed(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        g = await app.graph(
            {
                "a": await app.sign("contract.block", id="a"),
                "b": (await app.sign("contract.echo", id="b"), ["a"]),
            }
        )
        await g.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await g.suspend()
        assert await g.get_status() is SignatureStatus.SUSPENDED
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "echo") == [], "a suspended graph advanced"
        await g.resume()
        assert (await g.wait(timeout=harness.timeout))["b"]["id"] == "b"
        assert len(await harness.probe.events(ns, "block-start")) == 1
        assert len(await harness.probe.events(ns, "echo")) == 1

    async def test_retried_graph_reruns_the_failed_node_and_what_it_skipped(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        err = await app.sign("contract.collect", ns=ns, tag="err")
        g = await app.graph(
            {
                "a": await app.sign("contract.echo", id="a"),
                "gate": (await app.sign("contract.gated", id="gate"), ["a"]),
                "after": (await app.sign("contract.echo", id="after"), ["gate"]),
            },
            error_callbacks=[err],
        )
        with pytest.raises(TaskFailedError):
            await g.aio_run({"ns": ns}, timeout=harness.timeout)
        await err.wait(timeout=harness.timeout)
        assert await (await g.nodes())["after"].get_status() is SignatureStatus.SKIPPED
        await harness.probe.set_flag(ns, "open")
        await g.retry()
        out = await g.wait(timeout=harness.timeout)
        assert out["after"]["mageflow_results"] == {"gate": "gate"}
        assert [e["id"] for e in await harness.probe.events(ns, "echo")] == ["a", "after"]
        assert await harness.probe.events(ns, "gated") == ["gate", "gate"]
