"""Routing to capable workers: a task routed to a queue runs only on a worker serving it."""

from __future__ import annotations

import asyncio

import pytest

from mageflow.models.options import Options
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns
from mageflow.testing.contract_tasks import ROUTED_QUEUES, UNSERVED_QUEUE


class RoutingContract(ContractBase):
    """Needs ``harness.routed_queues`` to hold :data:`ROUTED_QUEUES`, each served by its
    own worker (process), apart from the workers of ``default``."""

    @staticmethod
    def _need_routing(h: ContractHarness) -> None:
        ContractBase.require(h, "routing", "workers cannot serve chosen queues")
        if not set(ROUTED_QUEUES) <= set(h.routed_queues):
            pytest.skip(f"the harness runs no workers for the queues {ROUTED_QUEUES}")

    async def test_tasks_run_only_on_workers_serving_their_queue(
        self, harness: ContractHarness
    ) -> None:
        self._need_routing(harness)
        ns = _ns()
        app = harness.app
        for queue in (*ROUTED_QUEUES, None):
            sig = await app.sign(
                "contract.where", ns=ns, tag=str(queue), mageflow_options=Options(queue=queue)
            )
            await sig.aio_run({}, timeout=harness.timeout)
        served = {e["tag"]: e["served"] for e in await self.events(harness, ns, "where", 3)}
        a, b = ROUTED_QUEUES
        assert a in served[a] and b not in served[a], served
        assert b in served[b] and a not in served[b], served
        assert "default" in served["None"] and a not in served["None"], served
        # the registered queue is the default of the task's signatures
        gpu = await app.sign("contract.gpu")
        assert b in await gpu.aio_run({}, timeout=harness.timeout)

    async def test_task_whose_queue_has_no_worker_stays_queued(
        self, harness: ContractHarness
    ) -> None:
        self._need_routing(harness)
        ns = _ns()
        app = harness.app
        sig = await app.sign(
            "contract.where", ns=ns, tag="nobody", mageflow_options=Options(queue=UNSERVED_QUEUE)
        )
        await sig.aio_run_no_wait({})
        await asyncio.sleep(harness.settle * 2)
        state = await sig.get_state()
        assert state.status is SignatureStatus.PENDING
        assert state.dispatched_at is not None
        assert state.queue == UNSERVED_QUEUE
        assert await harness.probe.events(ns, "where") == []
        await sig.cancel()
