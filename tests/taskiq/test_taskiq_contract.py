"""The core contract suite on the ``taskiq`` backend, against real components.

A redis-server (broker stream, MageFlow store and probe) and real worker processes
serving ``tests/taskiq/contract_app.py``, in two arrangements:

- ``mageflow-1proc``: one ``mageflow worker contract_app:mf --concurrency 4`` process,
  restarted by the test's supervisor if it exits (as systemd or Kubernetes would);
- ``taskiq-2proc``: ``taskiq worker contract_app:broker --workers 2 --max-async-tasks 3``,
  a manager forking two worker processes (and restarting any that dies).

The first keeps the store in the broker's database, so the engine appends dispatched
messages to the stream itself (stream delivery); the second keeps it in database 1, so
workers and clients publish them.

The crash-window test runs on both: the worker exits with 137 right after storing a
step's completion, before publishing the next step; the stream broker redelivers the
unacknowledged message once it is idle for ``IDLE_TIMEOUT`` and the repeated completion
re-issues the next step. Workers start once per arrangement (module scope); every
arrangement has its own stream and key prefix, so pytest-xdist processes share nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow.testing import contract_tasks
from mageflow.testing.contract import BackendContract, ContractHarness
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import MakeAppWorkers

pytestmark = pytest.mark.slow

IDLE_TIMEOUT = 2.0
"""Seconds before a dead worker's message is handed to another worker (default 60)."""

ARRANGEMENTS = {
    # name: (kind, processes, async tasks per process, the store's database)
    # db 0: the broker's own, so the engine appends dispatched messages to the stream
    # itself (stream delivery); db 1: another database, so workers publish them
    "mageflow-1proc": ("mageflow", 1, 4, 0),
    "taskiq-2proc": ("taskiq", 2, 3, 1),
}


@pytest_asyncio.fixture(
    loop_scope="session",
    scope="module",
    # an xdist group per arrangement: with --dist loadgroup the two run on two xdist
    # processes at once (each starts its workers once) instead of one after the other
    params=[
        pytest.param(a, marks=pytest.mark.xdist_group(f"taskiq-contract-{a}")) for a in ARRANGEMENTS
    ],
)
async def harness(
    request: pytest.FixtureRequest,
    redis_url: str,
    make_app_workers: MakeAppWorkers,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ContractHarness]:
    kind, processes, concurrency, db = ARRANGEMENTS[request.param]
    fault_dir = tmp_path_factory.mktemp("faults")
    store_url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    pool = make_app_workers(idle_timeout=IDLE_TIMEOUT, fault_dir=fault_dir, store_url=store_url)
    pool.start(kind, processes=processes, concurrency=concurrency)
    for queue in contract_tasks.ROUTED_QUEUES:  # a worker process of its own each
        pool.start("mageflow", concurrency=1, queues=queue)
    pool.supervise()
    app = pool.client_app()
    contract_tasks.register(app)
    probe = RedisProbe(redis_url)
    rdb = aioredis.Redis.from_url(redis_url)
    try:
        await pool.wait_ready(processes + len(contract_tasks.ROUTED_QUEUES), rdb)
        assert bool(app.engine.delivery) == (db == 0), "stream delivery on exactly for db 0"
        yield ContractHarness(
            app=app,
            probe=probe,
            fault_dir=fault_dir,
            redelivery_lease=IDLE_TIMEOUT,
            timeout=30.0,
            settle=0.3,
            worker_slots=processes * concurrency,
            routed_queues=contract_tasks.ROUTED_QUEUES,
        )
    finally:
        pool.stop_all()
        for when, worker in pool.restarts:
            print(f"\n[{request.param}] supervisor restarted {worker.log.name} at {when:.2f}")
        await app.aclose()
        await probe.close()
        await rdb.aclose()


class TestTaskiqContract(BackendContract):
    pass
