"""The product documents' own examples, as written (only the import name changed)."""

from __future__ import annotations

import pytest

from mageflow.errors import TaskFailedError
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class DocumentsContract(ContractBase):
    """``sign(task_name=...)``, the dynamic task queue, inferred input models."""

    async def test_sign_by_task_name_with_identifiers_and_callbacks(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        confirm = await app.sign("contract.collect", ns=ns, tag="confirmed")
        on_error = await app.sign("contract.collect", ns=ns, tag="failed")
        sig = await app.sign(
            task_name="contract.add",
            task_identifiers={"order_id": "12345"},
            success_callbacks=[confirm],
            error_callbacks=[on_error],
        )
        assert await sig.aio_run({"ns": ns, "x": 2, "y": 3}, timeout=harness.timeout) == 5
        (got,) = await self.events(harness, ns, "confirmed", 1)
        assert got["mageflow_results"] == 5
        assert await harness.probe.events(ns, "failed") == []

    async def test_dynamic_task_queue_open_swarm(self, harness: ContractHarness) -> None:
        """A swarm created without ``is_swarm_closed`` is open: add, run, then close."""
        ns = _ns()
        app = harness.app
        swarm = await app.swarm(task_name="dynamic-queue")
        assert not await swarm.is_swarm_closed()
        for i in range(3):
            new = await swarm.add_task("contract.new_task")
            await new.aio_run_no_wait({"ns": ns, "task_id": i, "unused": "ignored"})
        await swarm.close_swarm()
        results = await swarm.wait(timeout=harness.timeout)
        assert results == [{"model": "NewTaskMessage", "task_id": i} for i in range(3)]

    async def test_inferred_input_model_validates(self, harness: ContractHarness) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.new_task")
        with pytest.raises(TaskFailedError) as failed:
            await sig.aio_run({"ns": ns, "task_id": "not a number"}, timeout=harness.timeout)
        assert "task_id" in str(failed.value)
