"""The contract suite against the ``local`` backend variant named by ``MAGEFLOW_MUTANT``
(``tests/backends/mutants.py``; ``none``: the real one). Not collected by default: run by
``test_contract_mutations.py``, which expects every variant to fail it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from mageflow.backend.local import LocalBackend
from mageflow.store import MemoryStore
from mageflow.testing.contract import BackendContract, ContractHarness
from tests.backends.mutants import MUTANTS
from tests.backends.test_local_contract import local_harness

MUTANT = os.environ.get("MAGEFLOW_MUTANT", "none")


@pytest_asyncio.fixture(loop_scope="session")
async def harness(tmp_path: Path) -> AsyncIterator[ContractHarness]:
    backend_cls = LocalBackend if MUTANT == "none" else MUTANTS[MUTANT][0]
    backend = backend_cls(workers=3, concurrency=2)
    async with local_harness(backend, MemoryStore(), tmp_path, timeout=5) as h:
        yield h


class TestMutantContract(BackendContract):
    pass
