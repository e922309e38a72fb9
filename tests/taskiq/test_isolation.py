"""Issue 13 items 5 and 13 on real taskiq workers: each key prefix has its own stream,
dead consumers leave the group, and a worker started while Redis is down waits for it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from mageflow import SwarmConfig
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe
from mageflow_taskiq.backend import TaskiqBackend

if TYPE_CHECKING:
    from conftest import MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_apps_with_different_prefixes_do_not_share_a_stream(
    redis_url: str, make_app_workers: MakeAppWorkers
) -> None:
    """Two apps on one Redis, neither naming its queue: each worker serves only its own
    app's messages (before, both read the default stream and took each other's)."""
    pools = [make_app_workers(derive_queue=True) for _ in range(2)]
    rdb = aioredis.Redis.from_url(redis_url)
    probe = RedisProbe(redis_url)
    apps = []
    try:
        for pool in pools:
            pool.start("mageflow", concurrency=4)
            await pool.wait_ready(1, rdb)
            app = pool.client_app()
            contract_tasks.register(app)
            apps.append(app)
        for app in apps:
            assert isinstance(app.backend, TaskiqBackend)
            assert app.backend.stream_for(None) == f"{app.store.prefix}:tasks"
        swarms = []
        for i, app in enumerate(apps):
            items = [await app.sign("contract.echo", app=i, id=n) for n in range(20)]
            swarms.append(
                await app.swarm(items, config=SwarmConfig(max_concurrency=5), is_swarm_closed=True)
            )
        results = await asyncio.gather(
            *(sw.aio_run({"ns": f"iso-{i}"}, timeout=60) for i, sw in enumerate(swarms))
        )
        for i, got in enumerate(results):
            assert [r["app"] for r in got] == [i] * 20
        for pool in pools:
            assert "missing" not in pool.logs(), pool.logs()
    finally:
        for pool in pools:
            pool.stop_all()
        for app in apps:
            await app.aclose()
        await probe.close()
        await rdb.aclose()


async def test_dead_consumers_are_removed_from_the_group(
    redis_url: str, make_app_workers: MakeAppWorkers
) -> None:
    pool = make_app_workers(extra_env={"MAGEFLOW_TASKIQ_DEAD_CONSUMER_AFTER": "1"})
    rdb = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await rdb.xgroup_create(pool.queue, "taskiq", id="$", mkstream=True)
        for name in ("dead-1", "dead-2"):  # consumers of workers that are gone
            await rdb.xgroup_createconsumer(pool.queue, "taskiq", name)
        assert {c["name"] for c in await rdb.xinfo_consumers(pool.queue, "taskiq")} >= {
            "dead-1",
            "dead-2",
        }
        pool.start("mageflow", concurrency=2)
        await pool.wait_ready(1, rdb)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = {c["name"] for c in await rdb.xinfo_consumers(pool.queue, "taskiq")}
            if not names & {"dead-1", "dead-2"}:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"dead consumers still in the group: {names}\n{pool.logs()}")
        app = pool.client_app()
        contract_tasks.register(app)
        sig = await app.sign("contract.echo", ns="dead", v=1)
        assert await sig.aio_run({}, timeout=30) == {"v": 1}  # the live worker serves on
        await app.aclose()
    finally:
        pool.stop_all()
        await rdb.aclose()
