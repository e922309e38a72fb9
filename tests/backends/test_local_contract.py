"""The contract suite on the built-in ``local`` backend, with both stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mageflow import Mageflow, faults
from mageflow.backend.local import LocalBackend
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing import contract_tasks
from mageflow.testing.contract import BackendContract, ContractHarness
from mageflow.testing.probe import MemoryProbe, set_probe


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ContractHarness]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store: MemoryStore | RedisStore = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    else:
        store = MemoryStore()
    probe = MemoryProbe()
    set_probe(probe)
    faults.configure(tmp_path)
    # three independent workers with two slots each, so concurrency caps are tested
    # across workers, not inside one
    pools = dict.fromkeys(contract_tasks.ROUTED_QUEUES, 1)  # a pool of its own each
    app = Mageflow(backend=LocalBackend(workers=3, concurrency=2, pools=pools), store=store)
    contract_tasks.register(app)
    yield ContractHarness(
        app=app,
        probe=probe,
        fault_dir=tmp_path,
        timeout=10,
        settle=0.2,
        worker_slots=6,
        routed_queues=contract_tasks.ROUTED_QUEUES,
    )
    faults.configure(None)
    set_probe(None)
    await app.aclose()


class TestLocalContract(BackendContract):
    pass
