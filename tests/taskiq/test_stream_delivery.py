"""Stream delivery on real taskiq workers: with the store in the broker's Redis database,
the transition that records "step 1 done" appends step 2's message to the stream itself.

A worker killed right after that transition (``faults.AFTER_FINISH``, exit 137 as under
``kill -9``, before any publish of its own) therefore loses nothing: step 2 runs at once
on the restarted worker, long before the dead worker's step 1 message could be reclaimed
(``idle_timeout`` 60 s) or the reconciler would re-send step 2 (``resend_after`` 600 s).
With the store in another database, the same crash leaves step 2 to one of those.

The worker has one slot, busy with step 1 when it dies: a worker with a free slot waits
in XREADGROUP and may receive step 2 itself the moment it is appended; dying then leaves
step 2 to the reclaim, like any message a worker holds when it dies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import faults
from mageflow.models.status import SignatureStatus
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import AppWorkers, MakeAppWorkers

pytestmark = pytest.mark.slow

SLOW = {"MAGEFLOW_RESEND_AFTER": "600"}


@pytest_asyncio.fixture
async def pool(make_app_workers: MakeAppWorkers, tmp_path: Path) -> AsyncIterator[AppWorkers]:
    workers = make_app_workers(idle_timeout=60.0, fault_dir=tmp_path, extra_env=SLOW)
    workers.start("mageflow", concurrency=1)
    workers.supervise()
    yield workers
    workers.stop_all()


async def test_a_worker_dying_after_the_transition_loses_nothing(
    pool: AppWorkers, redis_url: str, tmp_path: Path
) -> None:
    app = pool.client_app()
    contract_tasks.register(app)
    assert app.engine.delivery, "store and broker share a database: stream delivery is on"
    rdb = aioredis.Redis.from_url(redis_url)
    probe = RedisProbe(redis_url)
    try:
        await pool.wait_ready(1, rdb)
        ns = uuid.uuid4().hex[:12]
        add = await app.sign("contract.add", y=1)
        double = await app.sign("contract.double", ns=ns)
        wf = await app.chain([add, double])
        armed = faults.arm(tmp_path, faults.AFTER_FINISH, "contract.add")
        # well inside the 60 s idle timeout and the 600 s resend delay
        assert await wf.aio_run({"ns": ns, "x": 1}, timeout=20) == 4
        assert not armed.exists(), "the worker did not die after step 1's transition"
        assert pool.restarts, "the supervisor restarted the dead worker"
        assert len(await probe.events(ns, "add")) == 1
        assert len(await probe.events(ns, "double")) == 1
    finally:
        await app.aclose()
        await rdb.aclose()
        await probe.close()


@pytest_asyncio.fixture
async def short_lease(make_app_workers: MakeAppWorkers) -> AsyncIterator[AppWorkers]:
    workers = make_app_workers(extra_env={"MAGEFLOW_LEASE": "0.6"})
    workers.start("mageflow", concurrency=2)
    yield workers
    workers.stop_all()


async def test_a_first_delivery_still_running_records_its_start(
    short_lease: AppWorkers, redis_url: str
) -> None:
    """A first delivery runs before its start is recorded; one still running after a
    third of its lease (0.2 s here) records it, so it shows as running and the reconciler
    never re-sends it; its finish then settles it once."""
    app = short_lease.client_app()
    contract_tasks.register(app)
    rdb = aioredis.Redis.from_url(redis_url)
    probe = RedisProbe(redis_url)
    try:
        await short_lease.wait_ready(1, rdb)
        ns = uuid.uuid4().hex[:12]
        sig = await app.sign("contract.block", ns=ns, id="b")
        await sig.aio_run_no_wait({})
        await probe.wait_until(lambda: _started(probe, ns), 10.0, "the user code to start")
        deadline = asyncio.get_running_loop().time() + 10
        while (state := await sig.get_state()).status is not SignatureStatus.ACTIVE:
            assert asyncio.get_running_loop().time() < deadline, state
            await asyncio.sleep(0.05)
        assert state.attempts == 1
        await probe.set_flag(ns, "release")
        assert await sig.wait(timeout=10) == "released"
        assert len(await probe.events(ns, "block-start")) == 1
        assert (await sig.get_state()).attempts == 1
    finally:
        await app.aclose()
        await rdb.aclose()
        await probe.close()


async def _started(probe: RedisProbe, ns: str) -> bool:
    return bool(await probe.events(ns, "block-start"))
