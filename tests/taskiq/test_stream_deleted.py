"""A worker rides out its stream being deleted under it (``DEL``, ``FLUSHDB``).

On Redis 7 a client blocked in ``XREADGROUP`` on a stream that is deleted is answered
``UNBLOCKED the stream key no longer exists``; the consumer group went with the stream.
That error used to escape the broker's ``listen()``: the worker exited. Now the group is
created again (from the start of the new stream) and the worker serves what is published
next, on Redis 6.2 (where the blocked read is not woken) and on Redis 7.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize("server", ["redis", "redis7"])
@pytest.mark.parametrize("how", ["del", "flushdb"])
async def test_the_worker_serves_on_after_its_stream_is_deleted(
    server: str, how: str, request: pytest.FixtureRequest, make_app_workers: MakeAppWorkers
) -> None:
    broker_url: str = request.getfixturevalue(f"{server}_url")
    pool = make_app_workers(broker_url=broker_url, store_url=broker_url)
    broker = aioredis.Redis.from_url(broker_url)
    announced = aioredis.Redis.from_url(pool.redis_url)
    probe = RedisProbe(pool.redis_url)
    app = pool.client_app()
    contract_tasks.register(app)
    ns = uuid.uuid4().hex[:12]
    try:
        worker = pool.start("mageflow", concurrency=2)
        await pool.wait_ready(1, announced)
        first = await app.sign("contract.collect", ns=ns, tag="before")
        await first.aio_run_no_wait({})
        await probe.wait_until(
            lambda: _served(probe, ns, "before"), 30, f"before the delete\n{pool.logs()}"
        )
        await asyncio.sleep(0.3)  # the worker is blocked reading the stream again
        if how == "del":
            assert await broker.delete(pool.queue) == 1
        else:
            await broker.flushdb()
        await asyncio.sleep(0.5)
        assert worker.proc.poll() is None, f"the worker exited:\n{pool.logs()}"
        second = await app.sign("contract.collect", ns=ns, tag="after")
        await second.aio_run_no_wait({})
        await probe.wait_until(
            lambda: _served(probe, ns, "after"), 30, f"after the delete\n{pool.logs()}"
        )
        assert worker.proc.poll() is None, f"the worker exited:\n{pool.logs()}"
    finally:
        pool.stop_all()
        await app.aclose()
        await probe.close()
        await broker.aclose()
        await announced.aclose()


async def _served(probe: RedisProbe, ns: str, tag: str) -> bool:
    return bool(await probe.events(ns, tag))
