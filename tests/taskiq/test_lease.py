"""Issue 13 item 6 on real taskiq workers: a copy of a running attempt, reclaimed by a
second worker while the first is frozen past the broker's idle timeout, does not run the
user code again; the attempt's lease (renewed while it runs) keeps the copy waiting."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from mageflow.testing import contract_tasks

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

IDLE_TIMEOUT = 1.0  # the smallest allowed: a frozen worker's message is reclaimed soon
FREEZE = 3.0  # longer than the idle timeout, shorter than the lease (default 10 s)
WARM = 0.5  # well past FIRST_START_AFTER


def crash_key(ns: str, *parts: str) -> str:
    return ":".join(("mageflow-probe", ns, *parts))  # as contract_app.crash_key


async def logged(pool: AppWorkers, text: str, within: float = 30.0) -> None:
    """Wait until a worker log shows ``text``."""
    deadline = time.monotonic() + within
    for _ in itertools.count():
        if text in pool.logs() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert text in pool.logs(), pool.logs()


async def test_reclaimed_copy_of_a_frozen_run_does_not_run_user_code(
    redis_url: str, make_app_workers: MakeAppWorkers
) -> None:
    pool = make_app_workers(idle_timeout=IDLE_TIMEOUT)
    for _ in range(2):
        pool.start("mageflow", concurrency=2)
    rdb = aioredis.Redis.from_url(redis_url)
    app = pool.client_app()
    contract_tasks.register(app)
    ns = uuid.uuid4().hex[:8]
    try:
        await pool.wait_ready(2, rdb)

        @app.task("crash.freeze")
        async def freeze(message: dict[str, object]) -> str:  # registered for the client
            raise AssertionError("runs on the workers only")

        # it runs WARM s before freezing: a first delivery records its start (and lease)
        # once it has run FIRST_START_AFTER s; frozen before that, nothing holds the task
        sig = await app.sign("crash.freeze", ns=ns, seconds=FREEZE, warm=WARM)
        assert await sig.aio_run({}, timeout=60) == "thawed"
        # the other worker reclaimed the frozen worker's message and met the lease
        await logged(pool, "is running elsewhere")
        # the copy ends once it sees the finished run (after the lease it met)
        await logged(pool, "re-issuing")
        runs = await rdb.lrange(crash_key(ns, "freeze"), 0, -1)
        assert len(runs) == 1, f"user code ran {len(runs)} times: {runs}"
    finally:
        pool.stop_all()
        await app.aclose()
        await rdb.aclose()
