"""Key lifetimes (KEY LIFETIMES in the engine script), on both hosts: a call expires a key
it may have created, and refreshes the keys it only reads when their node's refresh is
due, not on every call. What must hold whatever the throttle: no key of a running
workflow is ever without a TTL, and a key a call uses is refreshed once its node is due."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import split_key
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend
from tests.core.stores import manual, store_for
from tests.core.ttl import keys_of, ttl_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACTIVE_TTL = 8
"""Seconds: the engine refreshes a node's keys at most every eighth of it (1 s here)."""


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    store = store_for(request, "kl", active_ttl=ACTIVE_TTL, finished_ttl=4)
    mf = Mageflow(backend=ManualBackend(), store=store, resend_after=30.0)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]

    @mf.task("kl.echo")
    async def echo(msg: dict[str, Any]) -> Any:
        return msg.get("i")

    yield mf
    await mf.aclose()


async def _expire(mf: Mageflow, key: str, seconds: int) -> None:
    store = mf.store
    if isinstance(store, RedisStore):
        await store.client.expire(key, seconds)
    else:
        assert isinstance(store, MemoryStore)
        store.keyspace.expire(key, seconds)


async def _untimed(mf: Mageflow, wf: str) -> dict[str, int]:
    return {k: t for k in await keys_of(mf, wf) if (t := await ttl_of(mf, k)) <= 0}


async def test_no_key_of_a_running_workflow_is_ever_without_a_ttl(app: Mageflow) -> None:
    """A swarm of cap 1 empties its running set and the sent set in every call and fills
    them again (the keys are created anew), and a chain's items come and go: after every
    delivery every key of the workflow has a TTL."""
    items = [await app.sign("kl.echo", i=i) for i in range(5)]
    sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    chain = await app.chain(["kl.echo", "kl.echo", sw])
    await chain.aio_run_no_wait({})
    wf, _ = split_key(chain.key)
    assert await _untimed(app, wf) == {}
    delivered = 0
    while msgs := manual(app).take():
        for m in msgs:
            await manual(app).deliver(m)
            delivered += 1
            assert await _untimed(app, wf) == {}, f"after delivery {delivered}"
    assert delivered == 7
    assert await chain.wait(timeout=5) == [0, 1, 2, 3, 4]


async def test_a_key_only_read_is_refreshed_once_its_node_is_due(app: Mageflow) -> None:
    """The swarm's item list is only read while it runs: a call made after its node's
    refresh is due gives it (and its other keys) the active TTL again."""
    items = [await app.sign("kl.echo", i=i) for i in range(4)]
    sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    wf, sid = split_key(sw.key)
    h = app.store.hash_key(wf)
    lists = [f"{h}:items:{sid}", f"{h}:running:{sid}"]
    for k in lists:
        await _expire(app, k, 3)
    await asyncio.sleep(1.2)  # past the refresh interval (an eighth of the active TTL)
    (first,) = manual(app).take()
    await manual(app).deliver(first)
    assert [await ttl_of(app, k) for k in lists] == [ACTIVE_TTL, ACTIVE_TTL]
    while msgs := manual(app).take():
        for m in msgs:
            await manual(app).deliver(m)
    assert await sw.wait(timeout=5) == [0, 1, 2, 3]
