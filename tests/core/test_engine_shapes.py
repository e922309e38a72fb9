"""Degenerate workflow shapes, script errors and expiry, on both hosts of the one engine
script: Redis (EVALSHA) and the in-process host (MemoryStore)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.engine import SCRIPT, split_key
from mageflow.errors import EngineError, SignatureInUseError, WorkflowTooDeepError
from mageflow.flows.build import MAX_DEPTH
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    if request.param == "redis":
        store: Any = RedisStore(request.getfixturevalue("redis_url"), prefix=uuid.uuid4().hex[:8])
    else:
        store = MemoryStore()
    mf = Mageflow(backend=LocalBackend(workers=2, concurrency=4), store=store)
    runs: list[dict[str, Any]] = []

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        runs.append(msg)
        return int(msg.get("mageflow_results") or 0) + 1

    mf.runs = runs  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


async def test_empty_chain_returns_none(app: Mageflow) -> None:
    assert await (await app.chain([])).aio_run({}, timeout=5) is None


async def test_empty_closed_swarm_returns_no_results(app: Mageflow) -> None:
    assert await (await app.swarm([], is_swarm_closed=True)).aio_run({}, timeout=5) == []


async def test_empty_open_swarm_completes_when_closed(app: Mageflow) -> None:
    sw = await app.swarm([], is_swarm_closed=False)
    await sw.aio_run_no_wait({})
    assert await sw.get_status() is SignatureStatus.ACTIVE
    await sw.close_swarm()
    assert await sw.wait(timeout=5) == []


async def test_swarm_of_empty_swarms(app: Mageflow) -> None:
    inner = [await app.swarm([], is_swarm_closed=True) for _ in range(30)]
    assert await (await app.swarm(inner, is_swarm_closed=True)).aio_run({}, timeout=5) == [[]] * 30


async def test_empty_chain_nested_as_a_step(app: Mageflow) -> None:
    wf = await app.chain(["inc", await app.chain([]), "inc"])
    # the empty chain hands its input (step 1's result) on unchanged
    assert await wf.aio_run({}, timeout=5) == 2


async def test_chain_whose_only_step_is_a_swarm(app: Mageflow) -> None:
    sw = await app.swarm(
        [await app.sign("inc", mageflow_results=i) for i in range(3)], is_swarm_closed=True
    )
    assert await (await app.chain([sw])).aio_run({}, timeout=5) == [1, 2, 3]


async def test_callbacks_of_callbacks_fire_once_each(app: Mageflow) -> None:
    grandchild = await app.sign("inc", tag="grandchild")
    child = await app.sign("inc", tag="child", success_callbacks=[grandchild])
    sig = await app.sign("inc", tag="root", success_callbacks=[child])
    assert await sig.aio_run({}, timeout=5) == 1
    assert await (await app.load(grandchild.key)).wait(timeout=5) == 3
    tags = [r.get("tag") for r in app.runs]  # type: ignore[attr-defined]
    assert sorted(tags) == ["child", "grandchild", "root"]


async def test_one_signature_as_callback_of_two_nodes_is_refused(app: Mageflow) -> None:
    shared = await app.sign("inc")
    await app.sign("inc", success_callbacks=[shared])
    with pytest.raises(SignatureInUseError):
        await app.sign("inc", success_callbacks=[shared])


async def test_the_same_task_name_as_callback_of_several_nodes(app: Mageflow) -> None:
    wf = await app.chain(
        [await app.sign("inc", success_callbacks=["inc"]), "inc"], success=["inc", "inc"]
    )
    assert await wf.aio_run({}, timeout=5) == 2
    await app.backend.join(5)  # type: ignore[attr-defined]
    assert len(app.runs) == 5  # type: ignore[attr-defined]


async def test_too_deep_a_workflow_is_refused_when_built(app: Mageflow) -> None:
    node: Any = "inc"
    for _ in range(MAX_DEPTH):
        node = await app.chain([node])
    with pytest.raises(WorkflowTooDeepError, match="nests"):
        await app.chain([node])


async def test_a_script_error_is_an_engine_error_naming_the_workflow(app: Mageflow) -> None:
    sig = await app.sign("inc")
    wf, _ = split_key(sig.key)
    with pytest.raises(EngineError, match=wf):
        await app.store.run_script(SCRIPT, [app.store.hash_key(wf)], ["no-such-op", "0"])


async def test_engine_errors_are_mageflow_errors_from_a_broken_record(app: Mageflow) -> None:
    sig = await app.sign("inc")
    wf, sid = split_key(sig.key)
    await app.store.write(wf, {sid: "{not json"}, {})
    with pytest.raises(EngineError, match=wf):
        await sig.aio_run_no_wait({})


async def test_finished_workflows_expire() -> None:
    """The in-process host honours TTLs like Redis: a finished workflow is freed."""
    clock = [1000.0]
    store = MemoryStore(finished_ttl=60)
    store.keyspace.clock = lambda: clock[0]
    mf = Mageflow(backend=LocalBackend(), store=store)

    @mf.task("one")
    async def one(msg: dict[str, Any]) -> int:
        return 1

    sig = await mf.sign("one")
    assert await sig.aio_run({}, timeout=5) == 1
    wf, _ = split_key(sig.key)
    assert await store.read_all(wf)
    clock[0] += 61
    store.keyspace.sweep()
    assert await store.read_all(wf) == {}
    assert not any(k.startswith(store.hash_key(wf)) for k in store.keyspace.data)
    await mf.aclose()


async def test_a_large_swarm_added_as_an_item(app: Mageflow) -> None:
    outer = await app.swarm([], is_swarm_closed=False)
    inner = await app.swarm(["inc"] * 2500, is_swarm_closed=True)
    await outer.add_task(inner)
    await outer.close_swarm()
    (results,) = await outer.aio_run({}, timeout=60)
    assert results == [1] * 2500
