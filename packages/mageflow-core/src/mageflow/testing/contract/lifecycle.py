"""Suspend, resume, interrupt, cancel, status."""

from __future__ import annotations

import asyncio

import pytest

from mageflow.errors import (
    TaskFailedError,
    WorkflowFinishedError,
)
from mageflow.models.config import SwarmConfig
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns, until_active


class LifecycleContract(ContractBase):
    """Suspend, resume, interrupt, cancel, status."""

    async def test_suspend_then_resume_runs_nothing_twice(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        wf = await app.chain(
            [
                await app.sign("contract.block", id="b"),
                await app.sign("contract.echo", ns=ns, step=2),
                await app.sign("contract.echo", ns=ns, step=3),
            ]
        )
        await wf.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await wf.suspend()
        assert await wf.get_status() is SignatureStatus.SUSPENDED
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        assert await harness.probe.events(ns, "echo") == [], "suspended chain must not advance"
        await wf.resume()
        await wf.wait(timeout=harness.timeout)
        assert [e["step"] for e in await self.events(harness, ns, "echo", 2)] == [2, 3]
        assert len(await harness.probe.events(ns, "block-start")) == 1

    async def test_suspended_swarm_starts_no_queued_items(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        items = [await app.sign("contract.block", id=0)]
        items += [await app.sign("contract.echo", id=i) for i in range(1, 4)]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await sw.suspend()
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        assert await harness.probe.events(ns, "echo") == []
        await sw.resume()
        assert len(await sw.wait(timeout=harness.timeout)) == 4
        assert len(await harness.probe.events(ns, "echo")) == 3

    async def test_suspended_task_holds_its_callbacks(self, harness: ContractHarness) -> None:
        """A single task suspended while it runs finishes, but shows suspended and fires
        no callback until resumed; resume fires it once."""
        ns = _ns()
        app = harness.app
        on_ok = await app.sign("contract.collect", ns=ns, tag="ok")
        sig = await app.sign("contract.block", success_callbacks=[on_ok])
        await sig.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await sig.suspend()
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        await asyncio.sleep(harness.settle)
        assert await sig.get_status() is SignatureStatus.SUSPENDED
        assert await harness.probe.events(ns, "ok") == [], "a held task fired its callback"
        await sig.resume()
        assert await sig.wait(timeout=harness.timeout) == "released"
        assert len(await self.events(harness, ns, "ok", 1)) == 1
        assert len(await harness.probe.events(ns, "block-start")) == 1

    async def test_suspended_swarm_holds_completion(self, harness: ContractHarness) -> None:
        """A swarm suspended while its last items run: they finish, the swarm stays
        suspended and its callback waits; resume completes it once, results in order."""
        ns = _ns()
        app = harness.app
        total = await app.sign("contract.total", ns=ns)
        items = [await app.sign("contract.block", id=0), await app.sign("contract.add", x=1, y=1)]
        sw = await app.swarm(items, success_callbacks=[total], is_swarm_closed=True)
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await self.events(harness, ns, "add", 1)
        await sw.suspend()
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        await asyncio.sleep(harness.settle)
        assert await sw.get_status() is SignatureStatus.SUSPENDED
        assert await harness.probe.events(ns, "total") == []
        await sw.resume()
        assert await sw.wait(timeout=harness.timeout) == ["released", 2]
        assert len(await self.events(harness, ns, "total", 1)) == 1

    async def test_suspended_parent_holds_nested_advancement(
        self, harness: ContractHarness
    ) -> None:
        """A chain whose first step is a swarm, suspended at the root: the swarm's items
        finish, but neither the swarm's callback nor the next step starts before resume."""
        ns = _ns()
        app = harness.app
        inner_ok = await app.sign("contract.collect", ns=ns, tag="inner-ok")
        inner = await app.swarm(
            [await app.sign("contract.block", id=0)],
            success_callbacks=[inner_ok],
            is_swarm_closed=True,
        )
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain([inner, await app.sign("contract.echo", ns=ns, step=2)], success=done)
        await wf.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await wf.suspend()
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        await asyncio.sleep(harness.settle)
        assert await wf.get_status() is SignatureStatus.SUSPENDED
        for held in ("inner-ok", "echo", "done"):
            assert await harness.probe.events(ns, held) == [], f"{held} ran while suspended"
        await wf.resume()
        await wf.wait(timeout=harness.timeout)
        for once in ("inner-ok", "echo", "done"):
            assert len(await self.events(harness, ns, once, 1)) == 1

    async def test_interrupt(self, harness: ContractHarness) -> None:
        """With ``cancel_running`` the running task is cancelled and runs again on resume;
        without it, interrupt behaves as suspend: the running task finishes, nothing
        after it starts until resume."""
        ns = _ns()
        app = harness.app
        can_cancel = app.backend.capabilities.cancel_running
        wf = await app.chain(
            [
                await app.sign("contract.block", id="b"),
                await app.sign("contract.echo", ns=ns, step=2),
            ]
        )
        await wf.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await wf.interrupt()
        assert await wf.get_status() is SignatureStatus.INTERRUPTED
        if can_cancel:  # cancellation may land asynchronously (e.g. Hatchet's REST cancel)
            await asyncio.sleep(harness.settle)
        await harness.probe.set_flag(ns, "release")
        if can_cancel:
            await asyncio.sleep(harness.settle)
            assert await harness.probe.events(ns, "block-done") == [], "not cancelled"
        else:
            await self.events(harness, ns, "block-done", 1)
        assert await harness.probe.events(ns, "echo") == []
        await wf.resume()
        await wf.wait(timeout=harness.timeout)
        assert len(await harness.probe.events(ns, "block-start")) == (2 if can_cancel else 1)
        assert len(await self.events(harness, ns, "echo", 1)) == 1

    async def test_cancel_stops_for_good(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        on_ok = await app.sign("contract.collect", ns=ns, tag="ok")
        wf = await app.chain(
            [await app.sign("contract.block", id="b"), await app.sign("contract.echo", ns=ns)],
            success=on_ok,
        )
        await wf.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await wf.cancel()
        assert await wf.get_status() is SignatureStatus.CANCELED
        await harness.probe.set_flag(ns, "release")
        with pytest.raises(TaskFailedError) as info:
            await wf.wait(timeout=harness.timeout)
        assert info.value.error_type == "Canceled"
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "echo") == []
        assert await harness.probe.events(ns, "ok") == []
        with pytest.raises(WorkflowFinishedError):
            await wf.resume()

    async def test_resume_finished_workflow_raises(self, harness: ContractHarness) -> None:
        sig = await harness.app.sign("contract.echo")
        await sig.aio_run({"ns": _ns()}, timeout=harness.timeout)
        with pytest.raises(WorkflowFinishedError):
            await sig.resume()
        with pytest.raises(WorkflowFinishedError):
            await sig.suspend()

    async def test_status_moves_pending_active_done(self, harness: ContractHarness) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.block")
        assert await sig.get_status() is SignatureStatus.PENDING
        await sig.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await until_active(harness, sig)
        await harness.probe.set_flag(ns, "release")
        assert await sig.wait(timeout=harness.timeout) == "released"
        assert await sig.get_status() is SignatureStatus.DONE
        loaded = await harness.app.load(sig.key)
        assert (await loaded.get_state()).result == "released"
