"""The worker registry: a worker records its heartbeat, ``mageflow workers`` lists it, a
stopped worker leaves the list, a stale entry is dropped by the next reader."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import pytest

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.flows import workers
from mageflow.store import RedisStore
from mageflow.store.base import StateStore
from tests.core.stores import store_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def wait_for_workers(mf: Mageflow, n: int) -> list[workers.WorkerInfo]:
    for _ in range(200):
        found = await workers.live_workers(mf)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.05)  # the heartbeat task runs on this loop: give it a turn
    raise AssertionError(f"fewer than {n} worker(s) registered")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> StateStore:
    return store_for(request, "wr")


async def test_a_worker_registers_and_leaves(store: StateStore) -> None:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=3), store=store)

    @mf.task("noop")
    async def noop(msg: dict[str, object]) -> None:
        return None

    mf.start_reconciler()  # what a worker does when it starts serving
    (me,) = await wait_for_workers(mf, 1)
    assert me.backend == "local" and me.pid == os.getpid() and me.tasks == ["noop"]
    assert me.concurrency == 3 and time.time() - me.last_seen < 10
    await mf.aclose()
    assert await store.read_workers() == {}


async def test_stale_entries_are_dropped() -> None:
    mf = Mageflow(backend=LocalBackend(), redis_url="memory://")
    old = workers.WorkerInfo(
        id="gone:1:x",
        backend="local",
        host="gone",
        pid=1,
        queues=["default"],
        concurrency=1,
        tasks=[],
        started=0.0,
        last_seen=time.time() - workers.STALE_AFTER - 1,
    )
    await mf.store.put_worker(old.id, json.dumps(old.as_dict()), 60)
    await mf.store.put_worker("garbled", "{not json", 60)
    assert await workers.live_workers(mf) == []
    assert await mf.store.read_workers() == {}
    await mf.aclose()


async def test_the_workers_command_lists_a_live_worker(redis_url: str) -> None:
    prefix = f"wc-{uuid.uuid4().hex[:6]}"
    mf = Mageflow(backend=LocalBackend(), store=RedisStore(redis_url, prefix=prefix))
    mf.start_reconciler()
    (me,) = await wait_for_workers(mf, 1)
    env = {**os.environ, "MAGEFLOW_REDIS_URL": redis_url, "MAGEFLOW_KEY_PREFIX": prefix}
    for args in (["workers", "--json"], ["workers"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mageflow", *args, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        if "--json" in args:
            (listed,) = json.loads(out)
            assert listed["id"] == me.id and listed["pid"] == os.getpid()
        else:
            assert "1 live worker(s)" in out.decode() and "local" in out.decode()
    await mf.aclose()
