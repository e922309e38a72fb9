"""Graphs and branches on both hosts of the one engine script (Redis and in-process):
exactly-once per node under duplicate deliveries, priorities among ready nodes, build-time
refusals that write nothing, nesting as a swarm item, the CLI's view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import GraphNode, Mageflow, Options
from mageflow.backend.local import LocalBackend
from mageflow.engine import split_key
from mageflow.errors import (
    GraphCycleError,
    InvalidGraphError,
    SignatureInUseError,
    UnknownDependencyError,
)
from mageflow.models.status import SignatureStatus
from mageflow.testing.manual import ManualBackend

from .stores import manual, store_for
from .ttl import ttl_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTS = ["memory", "redis"]


def _register(mf: Mageflow, runs: list[tuple[str, Any]]) -> None:
    @mf.task("node")
    async def node(msg: dict[str, Any]) -> Any:
        runs.append((msg.get("id"), msg.get("mageflow_results")))
        if msg.get("fail"):
            raise ValueError(f"{msg.get('id')} failed")
        return msg.get("id")


@pytest_asyncio.fixture(loop_scope="session", params=HOSTS)
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(
        backend=ManualBackend(),
        store=store_for(request, "graphs", active_ttl=500, finished_ttl=50),
    )
    mf.runs = []  # type: ignore[attr-defined]
    _register(mf, mf.runs)  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


@pytest_asyncio.fixture(loop_scope="session", params=HOSTS)
async def local(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(
        backend=LocalBackend(workers=1, concurrency=4), store=store_for(request, "graphs")
    )
    mf.runs = []  # type: ignore[attr-defined]
    _register(mf, mf.runs)  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


async def _node(mf: Mageflow, id: str, **kw: Any) -> Any:
    return await mf.sign("node", id=id, **kw)


async def test_duplicate_deliveries_release_each_dependent_once(app: Mageflow) -> None:
    """a and b feed c: every delivery of a's message twice, its finish redelivered too,
    never starts c before b finished nor twice."""
    g = await app.graph(
        {
            "a": await _node(app, "a"),
            "b": await _node(app, "b"),
            "c": (await _node(app, "c"), ["a", "b"]),
        }
    )
    await g.aio_run_no_wait({})
    backend = manual(app)
    first = {s.key: s for s in backend.take()}
    a = next(s for k, s in first.items() if k.endswith(".n0"))
    b = next(s for k, s in first.items() if k.endswith(".n1"))
    await backend.deliver(a)
    await backend.deliver(a)  # a duplicate of a finished run: nothing more
    await backend.deliver(a, run_id="another-run")
    assert backend.take() == [], "c started before b finished"
    await backend.deliver(b)
    (c,) = backend.take()
    await backend.deliver(c)
    await backend.deliver(c)
    assert backend.take() == []
    assert await g.wait(timeout=5) == {"c": "c"}
    assert [r[0] for r in app.runs] == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert app.runs[-1][1] == {"a": "a", "b": "b"}  # type: ignore[attr-defined]


async def test_ready_nodes_start_by_priority(app: Mageflow) -> None:
    nodes = {
        f"p{p}": await app.sign("node", id=f"p{p}", mageflow_options=Options(priority=p))
        for p in (1, 5, 3)
    }
    g = await app.graph(nodes, max_concurrency=1)
    await g.aio_run_no_wait({})
    backend = manual(app)
    while sent := backend.take():
        (s,) = sent
        await backend.deliver(s)
    assert [r[0] for r in app.runs] == ["p5", "p3", "p1"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("nodes", "error"),
    [
        ({"a": ("node", ["b"]), "b": ("node", ["a"])}, GraphCycleError),
        ({"a": ("node", ["a"])}, GraphCycleError),
        ({"a": ("node", ["nope"])}, UnknownDependencyError),
        ({"a": "node", "b": GraphNode("node", requires=["a"], optional=["a"])}, InvalidGraphError),
        ({"a": ("node", "b")}, InvalidGraphError),
    ],
)
async def test_bad_graphs_are_refused_and_nothing_is_written(
    app: Mageflow, nodes: dict[str, Any], error: type[Exception]
) -> None:
    signed = await _node(app, "kept")
    before = await app.store.list_workflows(limit=100_000)
    with pytest.raises(error):
        await app.graph({**nodes, "kept": signed})
    assert await app.store.list_workflows(limit=100_000) == before
    # the signature was not moved into a half-built graph: it can still be used
    assert await signed.get_status() is SignatureStatus.PENDING
    g = await app.graph({"kept": signed})
    assert (await g.nodes())["kept"].key.startswith(split_key(g.key)[0])


async def test_branch_without_cases_is_refused(app: Mageflow) -> None:
    with pytest.raises(InvalidGraphError):
        await app.branch("node", {})


async def test_graph_as_a_swarm_item_and_branch_as_a_chain_step(local: Mageflow) -> None:
    g = await local.graph({"a": await _node(local, "a"), "b": (await _node(local, "b"), ["a"])})
    sw = await local.swarm([g, await _node(local, "solo")], is_swarm_closed=True)
    assert await sw.aio_run({}, timeout=10) == [{"b": "b"}, "solo"]
    br = await local.branch(await _node(local, "x"), {"x": await _node(local, "chosen")})
    ch = await local.chain([await _node(local, "first"), br])
    assert await ch.aio_run({}, timeout=10) == "chosen"


async def test_empty_graph_returns_an_empty_mapping(local: Mageflow) -> None:
    assert await (await local.graph({})).aio_run({}, timeout=5) == {}


async def test_selector_failure_skips_every_case(local: Mageflow) -> None:
    br = await local.branch(
        await _node(local, "sel", fail=True), {"a": await _node(local, "a")}, default="node"
    )
    with pytest.raises(Exception, match="sel failed"):
        await br.aio_run({}, timeout=10)
    cases = await br.cases()
    assert {await c.get_status() for c in cases.values()} == {SignatureStatus.SKIPPED}


async def test_no_matching_case_without_default_fails_the_branch(local: Mageflow) -> None:
    br = await local.branch(await _node(local, "zzz"), {"a": await _node(local, "a")})
    with pytest.raises(Exception, match="NoBranchMatched"):
        await br.aio_run({}, timeout=10)


async def test_tree_and_state_show_nodes_and_skipped(local: Mageflow) -> None:
    from mageflow.cli.ops import build_tree

    g = await local.graph(
        {
            "a": await _node(local, "a", fail=True),
            "b": (await _node(local, "b"), ["a"]),
        }
    )
    with pytest.raises(Exception, match="GraphFailed"):
        await g.aio_run({}, timeout=10)
    state = await g.get_state()
    assert state.kind == "graph" and len(state.children) == 2
    assert state.counts["total"] == 2 and state.counts["ended"] == 2
    tree = await build_tree(local, g.key, 50)
    labels = [str(child.label) for child in tree.children]
    assert any("skipped" in label for label in labels)


async def test_canceled_graph_starts_nothing_more(app: Mageflow) -> None:
    g = await app.graph({"a": await _node(app, "a"), "b": (await _node(app, "b"), ["a"])})
    await g.aio_run_no_wait({})
    backend = manual(app)
    (a,) = backend.take()
    await g.cancel()
    await backend.deliver(a)  # dropped: the workflow is canceled
    assert backend.take() == []
    assert app.runs == []  # type: ignore[attr-defined]
    assert await g.get_status() is SignatureStatus.CANCELED


async def test_interrupted_graph_runs_its_running_node_again_on_resume(app: Mageflow) -> None:
    g = await app.graph({"a": await _node(app, "a"), "b": (await _node(app, "b"), ["a"])})
    await g.aio_run_no_wait({})
    backend = manual(app)
    (a,) = backend.take()
    started = await app.engine.start(a.key, a.run_id, "node")
    assert started.action == "run"
    await g.interrupt()  # no cancel capability here: the run's next delivery is held
    assert await g.get_status() is SignatureStatus.INTERRUPTED
    await backend.deliver(a)  # its worker restarted it: held, the user code does not run
    assert app.runs == []  # type: ignore[attr-defined]
    await g.resume()
    (again,) = backend.take()
    assert again.key == a.key
    await backend.deliver(again)
    (b,) = backend.take()
    await backend.deliver(b)
    assert await g.wait(timeout=5) == {"b": "b"}
    assert [r[0] for r in app.runs] == ["a", "b"]  # type: ignore[attr-defined]


async def test_every_list_of_a_graph_takes_the_finished_ttl(app: Mageflow) -> None:
    """Canceled before its nested swarm and branch ever started: the graph's lists and
    theirs take the finished TTL with the root."""
    sw = await app.swarm([await _node(app, "item")], is_swarm_closed=True)
    br = await app.branch(await _node(app, "sel"), {"x": await _node(app, "x")})
    g = await app.graph({"a": await _node(app, "a"), "sw": (sw, ["a"]), "br": (br, ["a"])})
    wf, _ = split_key(g.key)
    await g.aio_run_no_wait({})
    manual(app).take()
    await g.cancel()
    h = app.store.hash_key(wf)
    assert 0 < await ttl_of(app, h) <= 50
    for kind in ("nodes:r", "sources:r", "sinks:r", "items:r.n1"):
        assert 0 < await ttl_of(app, f"{h}:{kind}") <= 50, kind


async def test_a_node_cannot_be_run_on_its_own(app: Mageflow) -> None:
    g = await app.graph({"a": await _node(app, "a")})
    br = await app.branch(await _node(app, "sel"), {"x": await _node(app, "x")})
    for inner in [*(await g.nodes()).values(), *(await br.cases()).values()]:
        with pytest.raises(SignatureInUseError, match="node of a graph or branch"):
            await inner.aio_run_no_wait({})
