"""The core contract suite on the ``hatchet`` backend against a *real* Hatchet.

Runs when ``HATCHET_CLIENT_TOKEN`` points at a real Hatchet (not a token minted by the
in-process test engine), or when a Docker engine answers, so that testcontainers can
start ``hatchet-lite`` (with Postgres); otherwise every test is skipped with the reason
(``pytest -rs`` prints it). Workers, store and probe are set up as for the test engine
(tests/hatchet/test_hatchet_contract.py); everything runs in a fresh Hatchet namespace.
A real engine re-queues a dead worker's runs only after its own heartbeat timeout, so
the harness allows a workflow longer to finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mageflow.testing.contract import BackendContract, ContractHarness
from tests.hatchet.conftest import contract_harness
from tests.hatchet.real_server import real_hatchet

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hatchet-real")]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def harness(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContractHarness]:
    with real_hatchet() as server:
        fault_dir = tmp_path_factory.mktemp("hatchet-real-faults")
        async with contract_harness(
            server, server.hatchet(), redis_url, fault_dir, timeout=90.0, cancel_landing=2.0
        ) as h:
            yield h


class TestRealHatchetContract(BackendContract):
    pass
