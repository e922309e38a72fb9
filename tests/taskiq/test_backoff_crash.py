"""A worker killed while a retry waits out its backoff does not lose the retry.

The failed attempt stamps the retry message with its due time and the retry is in the
stream at once; the worker that receives it holds it unacknowledged while it sleeps. Kill
that worker with ``kill -9``: the stream broker hands the message to a new worker once it
is idle for ``IDLE_TIMEOUT``, and that worker waits for the same due time (not a fresh
backoff, not at once) before running the retry, which then succeeds.

The worker that failed the first attempt may be the one that receives the retry, and log its
wait before it acknowledged the failed message (taskiq acknowledges after the retry
middleware published the retry): killed then, both messages are redelivered, and the failed
one, which carries no due time, meets the lease the failed attempt kept for the backoff
(``flows/lease.py``), so it cannot run the retry early either.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers, Worker

pytestmark = pytest.mark.slow

CRASH_BACKOFF = 3.0  # as contract_app.CRASH_BACKOFF
IDLE_TIMEOUT = 1.0  # < CRASH_BACKOFF: the message is handed over before the retry is due


def crash_key(ns: str, *parts: str) -> str:
    return ":".join(("mageflow-probe", ns, *parts))  # as contract_app.crash_key


@pytest_asyncio.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_worker_killed_during_the_backoff_wait_loses_no_retry(
    make_app_workers: MakeAppWorkers, rdb: aioredis.Redis
) -> None:
    pool: AppWorkers = make_app_workers(idle_timeout=IDLE_TIMEOUT)
    workers = [pool.start("mageflow", concurrency=2) for _ in range(2)]
    app = pool.client_app()

    @app.task("crash.backoff")
    async def stub(message: dict[str, Any]) -> None:  # pragma: no cover - runs on workers
        raise AssertionError("crash.backoff runs on the worker processes")

    ns = uuid.uuid4().hex[:12]
    try:
        await pool.wait_ready(2, rdb)
        sig = await app.sign("crash.backoff")
        await sig.aio_run_no_wait({"ns": ns})
        holder: list[Worker] = []

        async def waiting() -> bool:
            holder[:] = [w for w in workers if "for its backoff" in w.log.read_text()]
            return bool(holder)

        await until(waiting, "a worker to hold the retry while it waits for its backoff")
        (dead,) = holder
        dead.kill9()
        (alive,) = [w for w in workers if w is not dead]
        assert await sig.wait(timeout=30) == "recovered"
        runs = [r.split(":") for r in await rdb.lrange(crash_key(ns, "backoff"), 0, -1)]
        assert len(runs) == 2  # the failed attempt and the retry, each once
        assert int(runs[1][0]) == alive.proc.pid
        (_, failed), (_, retried) = runs
        assert float(retried) - float(failed) >= CRASH_BACKOFF  # the due time survived
    finally:
        pool.stop_all()
        await app.aclose()
