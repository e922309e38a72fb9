"""The contract suite on the built-in ``local`` backend, with both stores."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mageflow import Mageflow, faults
from mageflow.backend.local import LocalBackend
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore
from mageflow.testing import contract_tasks
from mageflow.testing.contract import BackendContract, ContractHarness
from mageflow.testing.probe import MemoryProbe, set_probe
from mageflow.testing.redis_cluster import watch_script_keys

URL_FIXTURES = {"redis": "redis_url", "redis7": "redis7_url", "cluster": "redis_cluster_url"}

LEASE = 0.3
"""The local backend never takes a message back from a live worker: any lease holds."""


@contextlib.asynccontextmanager
async def local_harness(
    backend: LocalBackend, store: StateStore, fault_dir: Path, timeout: float = 10
) -> AsyncIterator[ContractHarness]:
    """The contract tasks on ``backend`` (in this process) and ``store``."""
    probe = MemoryProbe()
    set_probe(probe)
    faults.configure(fault_dir)
    # a short run lease: a worker the fault kills mid-task is redelivered at once here,
    # and its copy waits for the dead attempt's lease to lapse
    app = Mageflow(backend=backend, store=store, lease=1.0)
    contract_tasks.register(app)
    try:
        yield ContractHarness(
            app, probe, fault_dir, redelivery_lease=LEASE, timeout=timeout, settle=0.2,
            worker_slots=backend.workers * backend.concurrency,
            routed_queues=tuple(q for q in contract_tasks.ROUTED_QUEUES if q in backend.pools),
        )  # fmt: skip
    finally:
        faults.configure(None)
        set_probe(None)
        await app.aclose()


@pytest_asyncio.fixture(
    loop_scope="session",
    params=["memory", "redis", "redis7", pytest.param("cluster", marks=pytest.mark.cluster)],
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ContractHarness]:
    """The suite on the in-process store, on one Redis, on one Redis 7+ (the engine as a
    Redis function: ``FCALL``; the session's Redis may be older), and on a three-master Redis
    Cluster. On the cluster each test also proves the engine's scripts never touch a key
    outside their workflow's slot: Redis Cluster itself refuses a script's access to a key
    another node serves ("non local key") and a command over two slots (CROSSSLOT), and
    ``watch_script_keys`` (MONITOR on every master) fails the test on any command a
    script ran on a name of another slot, even one the same node serves."""
    if request.param in URL_FIXTURES:
        url = request.getfixturevalue(URL_FIXTURES[request.param])
        store: MemoryStore | RedisStore = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    else:
        store = MemoryStore()
    # three independent workers with two slots each, so concurrency caps are tested
    # across workers, not inside one
    pools = dict.fromkeys(contract_tasks.ROUTED_QUEUES, 1)  # a pool of its own each
    backend = LocalBackend(workers=3, concurrency=2, pools=pools)
    with contextlib.ExitStack() as stack:
        strays: list[str] = []
        if request.param == "cluster":
            strays = stack.enter_context(
                watch_script_keys(request.getfixturevalue("redis_cluster_srv"))
            )
        async with local_harness(backend, store, tmp_path) as h:
            yield h
    assert not strays, f"scripts touched keys outside their workflow's slot: {strays[:5]}"


class TestLocalContract(BackendContract):
    pass
