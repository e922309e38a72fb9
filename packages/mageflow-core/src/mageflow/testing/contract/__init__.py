"""The backend contract suite: every semantic of the design, run against any backend.

An adapter proves itself by subclassing :class:`BackendContract` in its own tests and
providing one fixture, ``harness``, returning a :class:`ContractHarness`: a ``Mageflow``
client instance whose workers (in-process or subprocesses) serve the tasks of
:mod:`mageflow.testing.contract_tasks`, plus the probe those tasks write to. Tests that
need a capability the backend does not declare are skipped with the reason printed.

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def harness(self, my_workers) -> ContractHarness:
            return ContractHarness(app=my_workers.app, probe=my_workers.probe, ...)
"""

from __future__ import annotations

import pytest

from mageflow.testing.contract.bad_input import BadInputContract
from mageflow.testing.contract.base import ContractHarness
from mageflow.testing.contract.chains import ChainContract
from mageflow.testing.contract.context import ContextContract
from mageflow.testing.contract.counts import CountsContract
from mageflow.testing.contract.delivery import DeliveryContract
from mageflow.testing.contract.documents import DocumentsContract
from mageflow.testing.contract.dynamic import DynamicContract
from mageflow.testing.contract.events import EventsContract
from mageflow.testing.contract.exactly_once import ExactlyOnceContract
from mageflow.testing.contract.graphs import GraphContract
from mageflow.testing.contract.lifecycle import LifecycleContract
from mageflow.testing.contract.options import OptionsContract
from mageflow.testing.contract.rerun import RerunContract
from mageflow.testing.contract.routing import RoutingContract
from mageflow.testing.contract.signatures import SignatureContract
from mageflow.testing.contract.swarms import SwarmContract


class BackendContract(
    SignatureContract,
    ChainContract,
    SwarmContract,
    LifecycleContract,
    RerunContract,
    ExactlyOnceContract,
    BadInputContract,
    ContextContract,
    OptionsContract,
    DocumentsContract,
    DynamicContract,
    GraphContract,
    RoutingContract,
    CountsContract,
    DeliveryContract,
    EventsContract,
):
    """Subclass and provide the ``harness`` fixture."""

    pytestmark = pytest.mark.asyncio(loop_scope="session")


__all__ = ["BackendContract", "ContractHarness"]
