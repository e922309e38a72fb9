"""Property-based test of graphs: random DAGs of tasks (some failing, some edges optional,
a random concurrency cap), run on :class:`ManualBackend` with messages delivered in random
order and duplicated (a new run id) or redelivered (the same run id).

Checked against what the user code observed and what the store reports:

* every node's user code runs at most once, and only after each of its dependencies ran
  (or was skipped);
* a node runs exactly when no required dependency failed or was skipped; the others end
  ``skipped``, and each node receives its dependencies' outcomes keyed by name;
* never more than ``max_concurrency`` nodes are dispatched and unfinished at once;
* with no failure budget the graph ends ``done`` with its sinks' outcomes keyed by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mageflow import GraphNode, Mageflow
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore
from mageflow.testing.manual import ManualBackend, Sent

EXAMPLES = int(os.environ.get("MAGEFLOW_PROPERTY_EXAMPLES", "100"))


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    nodes: dict[str, Any] = {}
    for i in range(n):
        earlier = [f"n{j}" for j in range(i)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        optional = [d for d in deps if draw(st.booleans())]
        nodes[f"n{i}"] = {
            "requires": [d for d in deps if d not in optional],
            "optional": optional,
            "fail": draw(st.integers(0, 3)) == 0,
        }
    return {
        "nodes": nodes,
        "cap": draw(st.one_of(st.none(), st.integers(1, 3))),
        "schedule": draw(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=80)),
    }


def expected_outcomes(nodes: dict[str, Any]) -> dict[str, str]:
    """done / failed / skipped of each node: the semantics of docs/concepts.md#graphs."""
    out: dict[str, str] = {}
    for name, spec in nodes.items():  # dependencies come first
        if any(out[d] != "done" for d in spec["requires"]):
            out[name] = "skipped"
        else:
            out[name] = "failed" if spec["fail"] else "done"
    return out


async def deliver(backend: ManualBackend, sent: Sent, run_id: str | None = None) -> None:
    """Deliver as a worker would; a failing task's error is the worker's to log."""
    with contextlib.suppress(ValueError):
        await backend.deliver(sent, run_id=run_id)


async def run_case(case: dict[str, Any]) -> None:
    backend = ManualBackend()
    mf = Mageflow(backend=backend, store=MemoryStore())
    ran: list[tuple[str, Any]] = []

    @mf.task("gnode")
    async def gnode(msg: dict[str, Any]) -> Any:
        ran.append((msg["id"], msg.get("mageflow_results")))
        if msg["fail"]:
            raise ValueError(msg["id"])
        return msg["id"]

    spec_nodes = case["nodes"]
    nodes = {
        name: GraphNode(
            await mf.sign("gnode", id=name, fail=spec["fail"]),
            requires=spec["requires"],
            optional=spec["optional"],
        )
        for name, spec in spec_nodes.items()
    }
    g = await mf.graph(nodes, max_concurrency=case["cap"], stop_after_n_failures=None)
    await g.aio_run_no_wait({})
    pool = backend.take()
    delivered: list[Any] = []
    finished: set[str] = set()
    schedule = list(case["schedule"])
    while pool:
        pick, how = schedule.pop(0) if schedule else (0, 0)
        if case["cap"] is not None:
            # stale copies of finished nodes (a redelivery re-issues what was owed) aside
            unfinished = {s.key for s in pool} - finished
            assert len(unfinished) <= case["cap"], "more nodes dispatched than the cap"
        sent = pool.pop(pick % len(pool))
        await deliver(backend, sent)
        delivered.append(sent)
        if how == 1:  # a duplicate under a new run id
            await deliver(backend, sent, run_id=uuid.uuid4().hex)
        elif how == 2:  # an old message redelivered with its run id
            await deliver(backend, delivered[pick % len(delivered)])
        pool += backend.take()
        finished.add(sent.key)

    expected = expected_outcomes(spec_nodes)
    order = [name for name, _ in ran]
    assert sorted(order) == sorted(n for n, o in expected.items() if o != "skipped")
    assert len(order) == len(set(order)), f"a node ran twice: {order}"
    for name, got in ran:
        spec = spec_nodes[name]
        deps = spec["requires"] + spec["optional"]
        for d in deps:
            if expected[d] != "skipped":
                assert order.index(d) < order.index(name), f"{name} ran before {d}"
        if deps:
            assert set(got) == set(deps)
            for d in deps:
                if expected[d] == "done":
                    assert got[d] == d
                else:
                    assert "mageflow_error" in got[d]
    handles = await g.nodes()
    for name, h in handles.items():
        assert (await h.get_status()).value == expected[name]
    assert await g.get_status() is SignatureStatus.DONE
    result = await g.wait(timeout=1)
    sinks = {
        n
        for n in spec_nodes
        if not any(n in s["requires"] + s["optional"] for s in spec_nodes.values())
    }
    assert set(result) == sinks
    for s in sinks:
        assert (result[s] == s) == (expected[s] == "done")
    await mf.aclose()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(dags())
def test_random_graphs_run_each_node_once_in_dependency_order(case: dict[str, Any]) -> None:
    asyncio.run(run_case(case))


@pytest.mark.parametrize("fail", [False, True])
def test_a_single_node_graph(fail: bool) -> None:
    asyncio.run(
        run_case(
            {
                "nodes": {"n0": {"requires": [], "optional": [], "fail": fail}},
                "cap": None,
                "schedule": [],
            }
        )
    )
