"""The core contract suite on the ``hatchet`` backend, against real components.

The Hatchet server is :class:`HatchetTestEngine` (the real hatchet-sdk client and worker
talk to it over gRPC and REST); the workers are two real processes with 3 slots each, one
``mageflow worker tests.hatchet.contract_app:mf``, one ``python contract_app.py`` calling
``mf.run_worker()``; the store and the probe are a real Redis.

The crash-window test runs: a worker exits with 137 right after storing a step's
completion, before publishing the next step; its listener process sees its parent gone
and unsubscribes (or its heartbeats stop), the engine re-queues the run with the same run
id and attempt on the surviving worker, and the repeated completion re-issues the next
step. The supervisor starts a replacement worker so that later tests have two again.
Interrupt cancels running Hatchet runs through the REST cancel (``cancel_running``); as
that is asynchronous, the harness's backend lets each cancel reach the worker before
returning (see ``CancelLandingBackend`` in conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mageflow.testing.contract import BackendContract, ContractHarness
from mageflow_hatchet.testing import HatchetTestEngine
from tests.hatchet.conftest import contract_harness

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hatchet-contract")]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def harness(
    engine: HatchetTestEngine, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContractHarness]:
    fault_dir = tmp_path_factory.mktemp("hatchet-faults")
    async with contract_harness(engine, engine.hatchet(), redis_url, fault_dir) as h:
        yield h


class TestHatchetContract(BackendContract):
    pass
