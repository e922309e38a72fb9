"""What an adapter reports to the core about each delivery (``RunContext``), and what it
does after the core answers: retries, redeliveries, cancel, timeouts.

These tests watch the deliveries themselves (the probe's ``delivery`` events, recorded by
the tap :func:`mageflow.testing.contract_tasks.register` installs, before the core sees a
delivery), not the core's own count: a retry the engine skips as a duplicate still shows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mageflow import faults
from mageflow.errors import TaskFailedError
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns
from mageflow.testing.contract_tasks import DELIVERY, OVERDUE_TIMEOUT, RETRIES


class DeliveryContract(ContractBase):
    """``RunContext`` as reported, and the task manager's side of retries and cancel."""

    @staticmethod
    async def deliveries(h: ContractHarness, ns: str, n: int) -> list[dict[str, Any]]:
        """The ``n`` deliveries of ``ns`` (after ``settle``, no more than ``n``)."""
        return await ContractBase.events(h, ns, DELIVERY, n)

    async def test_attempts_are_reported_as_counted(self, harness: ContractHarness) -> None:
        """A task failing until its last attempt: attempts 1, 2, 3; only the last is
        final; one run id throughout."""
        ns = _ns()
        sig = await harness.app.sign("contract.counted")
        assert await sig.aio_run({"ns": ns}, timeout=harness.timeout) == RETRIES + 1
        seen = await self.deliveries(harness, ns, RETRIES + 1)
        assert [d["attempt"] for d in seen] == list(range(1, RETRIES + 2)), seen
        assert [d["final"] for d in seen] == [False] * RETRIES + [True], seen
        assert len({d["run_id"] for d in seen}) == 1, f"one run id for one message: {seen}"

    async def test_non_retryable_error_makes_one_attempt(self, harness: ContractHarness) -> None:
        """``NonRetryableError`` from a task with retries left: one delivery, the node
        failed at once, its error callback fired once."""
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="error")
        sig = await app.sign("contract.give_up", error_callbacks=[on_error])
        with pytest.raises(TaskFailedError):
            await sig.aio_run({"ns": ns}, timeout=harness.timeout)
        assert len(await self.deliveries(harness, ns, 1)) == 1
        assert len(await self.events(harness, ns, "give-up", 1)) == 1
        assert len(await self.events(harness, ns, "error", 1)) == 1

    async def test_redelivery_after_the_final_attempt_settles_the_node(
        self, harness: ContractHarness
    ) -> None:
        """The worker dies inside the final attempt (after a retried first one): the task
        manager redelivers it and hands it to the handler, however it counts the
        redelivery; the node settles. A task manager that drops a redelivery past its
        retry budget leaves the workflow active for ever."""
        if harness.fault_dir is None or not harness.redelivers_after_crash:
            pytest.skip(
                f"the {harness.app.backend.name!r} harness cannot crash a worker mid-task, or "
                "its task manager does not redeliver: a worker dying mid-task then leaves "
                "the node active for ever"
            )
        ns = _ns()
        armed = faults.arm(harness.fault_dir, faults.IN_TASK, "contract.mortal")
        sig = await harness.app.sign("contract.mortal")
        assert await sig.aio_run({"ns": ns}, timeout=harness.timeout) == "survived"
        assert not armed.exists(), "the fault never fired"
        first, final, again = await self.deliveries(harness, ns, 3)
        assert (first["attempt"], first["final"]) == (1, False), first
        assert (final["attempt"], final["final"]) == (2, True), final
        assert again["attempt"] >= 2 and again["final"], f"a redelivery of the final: {again}"
        assert first["run_id"] == final["run_id"] == again["run_id"]
        assert len(await self.events(harness, ns, "mortal", 3)) == 3

    async def test_task_longer_than_the_lease_runs_once(self, harness: ContractHarness) -> None:
        """A task running past the task manager's redelivery lease keeps its message: the
        worker renews its claim, nothing is handed to a second worker."""
        lease = harness.redelivery_lease
        if lease is None:
            pytest.skip(f"the {harness.app.backend.name!r} harness declares no redelivery_lease")
        ns = _ns()
        sig = await harness.app.sign("contract.overtime", seconds=lease * 1.5 + harness.settle)
        assert await sig.aio_run({"ns": ns}, timeout=harness.timeout + 2 * lease) == "on time"
        assert len(await self.deliveries(harness, ns, 1)) == 1
        assert len(await self.events(harness, ns, "overtime-start", 1)) == 1

    async def test_canceled_run_is_not_retried(self, harness: ContractHarness) -> None:
        """A task with retries left, canceled while it runs: the task manager does not
        retry it (with ``cancel_running`` it also stops it)."""
        ns = _ns()
        sig = await harness.app.sign("contract.hold")
        await sig.aio_run_no_wait({"ns": ns})

        async def started() -> bool:
            return len(await harness.probe.events(ns, "hold-start")) >= 1

        await harness.probe.wait_until(started, harness.timeout, "the held task to start")
        await sig.cancel()
        assert await sig.get_status() is SignatureStatus.CANCELED
        await asyncio.sleep(harness.settle)
        await harness.probe.set_flag(ns, "release")
        await asyncio.sleep(harness.settle)
        if harness.app.backend.capabilities.cancel_running:
            assert await harness.probe.events(ns, "hold-done") == [], "not stopped"
        assert len(await self.deliveries(harness, ns, 1)) == 1
        assert len(await harness.probe.events(ns, "hold-start")) == 1

    async def test_the_cores_timeout_settles_before_the_task_managers(
        self, harness: ContractHarness
    ) -> None:
        """A task outliving its ``timeout=`` fails with ``TaskTimeoutError`` through the
        core, on its one delivery: the task manager's own timeout is set above it and did
        not stop or retry the attempt first.

        That backstop exists for a hung worker. Should it ever kill a handler, the core
        cannot record the attempt: a retry the task manager makes re-runs it, but a final
        attempt killed so leaves its node active until its active TTL (cancel it, or
        ``mageflow retry`` it once failed by hand). Adapters cannot do better than the
        task manager's own timeout allows; setting it far above ``timeout=`` keeps it
        for hung workers only."""
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="error")
        sig = await app.sign("contract.overdue", error_callbacks=[on_error])
        with pytest.raises(TaskFailedError) as info:
            await sig.aio_run({"ns": ns}, timeout=harness.timeout)
        assert info.value.error_type == "TaskTimeoutError", info.value
        (got,) = await self.events(harness, ns, "error", 1)
        assert got["mageflow_error"]["type"] == "TaskTimeoutError"
        await asyncio.sleep(OVERDUE_TIMEOUT)
        assert len(await self.deliveries(harness, ns, 1)) == 1
        assert len(await harness.probe.events(ns, "overdue")) == 1
