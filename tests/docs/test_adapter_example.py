"""The adapter of docs/adapters.md passes the whole contract suite."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mageflow import Mageflow, faults
from mageflow.store import RedisStore
from mageflow.testing import contract_tasks
from mageflow.testing.contract import BackendContract, ContractHarness
from mageflow.testing.probe import MemoryProbe, set_probe

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "redis_list_adapter.py"


def load_example() -> type:
    spec = importlib.util.spec_from_file_location("redis_list_adapter", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis_list_adapter"] = module
    spec.loader.exec_module(module)
    return module.RedisListBackend  # type: ignore[no-any-return]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def harness(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContractHarness]:
    backend_cls = load_example()
    backend = backend_cls(redis_url, queue=f"q-{uuid.uuid4().hex[:6]}", slots=6)
    probe = MemoryProbe()
    set_probe(probe)
    # in-process crash points: a "dead" worker loses its message for good (BLPOP), so
    # the crash-window test is passed by the reconciler, not by a redelivery
    fault_dir = tmp_path_factory.mktemp("faults")
    faults.configure(fault_dir)
    app = Mageflow(backend=backend, store=RedisStore(redis_url, prefix=uuid.uuid4().hex[:6]))
    contract_tasks.register(app)
    worker = asyncio.create_task(backend.serve())
    yield ContractHarness(
        app=app,
        probe=probe,
        fault_dir=fault_dir,
        redelivers_after_crash=False,
        timeout=15,
        settle=0.3,
        worker_slots=6,
    )
    worker.cancel()
    faults.configure(None)
    set_probe(None)
    await app.aclose()


class TestRedisListAdapterContract(BackendContract):
    pass
