"""The supported taskiq layout with a Redis Cluster: the state on a three-master cluster
(``MAGEFLOW_REDIS_URL=redis+cluster://...``), the stream broker on a single Redis. Real
``mageflow worker`` processes; the taskiq contract itself runs on a single Redis (the
store's behaviour on the cluster is the local contract's, run there in full)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.flows import workers
from mageflow.store import RedisStore
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def on_cluster(
    redis_url: str, redis_cluster_url: str, make_app_workers: MakeAppWorkers
) -> AsyncIterator[tuple[AppWorkers, Mageflow]]:
    """Two ``mageflow worker`` processes, state on the cluster, broker on ``redis_url``."""
    pool = make_app_workers(store_url=redis_cluster_url, broker_url=redis_url)
    for _ in range(2):
        pool.start("mageflow", concurrency=3)
    app = pool.client_app()
    contract_tasks.register(app)
    rdb = aioredis.Redis.from_url(redis_url)
    try:
        await pool.wait_ready(2, rdb)
        yield pool, app
    finally:
        pool.stop_all()
        await app.aclose()
        await rdb.aclose()


async def test_chains_and_swarms_run_with_the_state_on_a_cluster(
    on_cluster: tuple[AppWorkers, Mageflow], redis_url: str
) -> None:
    _, app = on_cluster
    assert isinstance(app.store, RedisStore) and app.store.cluster
    probe = RedisProbe(redis_url)
    ns = uuid.uuid4().hex[:12]
    chains = [
        await app.chain(
            [
                await app.sign("contract.add", ns=ns, x=i, y=1),
                await app.sign("contract.double", ns=ns),
            ]
        )
        for i in range(6)
    ]
    items = [await app.sign("contract.add", ns=ns, x=i, y=i) for i in range(8)]
    sw = await app.swarm(
        items,
        config=SwarmConfig(max_concurrency=2),
        success_callbacks=[await app.sign("contract.collect", ns=ns, tag="swarm-done")],
        is_swarm_closed=True,
    )
    results = await asyncio.wait_for(
        asyncio.gather(sw.aio_run({}), *(c.aio_run({}) for c in chains)), 60
    )
    assert results[0] == [2 * i for i in range(8)]
    assert results[1:] == [2 * (i + 1) for i in range(6)]
    for _ in range(200):
        if await probe.events(ns, "swarm-done"):
            break
        await asyncio.sleep(0.05)
    assert len(await probe.events(ns, "swarm-done")) == 1
    await probe.close()


async def test_the_workers_are_listed_from_the_cluster(
    on_cluster: tuple[AppWorkers, Mageflow],
) -> None:
    pool, app = on_cluster
    pids = {w.proc.pid for w in pool.started}
    for _ in range(200):
        listed = {w.pid for w in await workers.live_workers(app)}
        if pids <= listed:
            break
        await asyncio.sleep(0.05)
    assert pids <= listed
