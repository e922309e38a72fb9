"""Retry: a failed workflow re-runs what failed; nothing done runs again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from mageflow.errors import TaskFailedError, WorkflowBusyError, WorkflowNotFailedError
from mageflow.flows.handles import Signature
from mageflow.models.config import SwarmConfig
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns, until_active


class RerunContract(ContractBase):
    """Retry: a failed workflow re-runs what failed; nothing done runs again."""

    @staticmethod
    async def _fails(
        h: ContractHarness, wf: Signature, message: Any, callbacks: Sequence[Signature] = ()
    ) -> None:
        """Run (or wait for) ``wf`` until it failed, then let its error callbacks finish:
        retry is refused while they run."""
        if message is not None:
            await wf.aio_run_no_wait(message)
        with pytest.raises(TaskFailedError):
            await wf.wait(timeout=h.timeout)
        for cb in callbacks:
            await cb.wait(timeout=h.timeout)

    async def test_retried_chain_resumes_at_its_failed_step(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        ok = await app.sign("contract.collect", ns=ns, tag="ok")
        err = await app.sign("contract.collect", ns=ns, tag="err")
        wf = await app.chain(
            [
                await app.sign("contract.echo", ns=ns, step=1),
                await app.sign("contract.gated", ns=ns, id=2),
                await app.sign("contract.echo", ns=ns, step=3),
            ],
            success=ok,
            error=err,
        )
        await self._fails(harness, wf, {"ns": ns}, [err])
        assert await wf.get_status() is SignatureStatus.FAILED
        await harness.probe.set_flag(ns, "open")
        await wf.retry()
        assert await wf.wait(timeout=harness.timeout) == {"step": 3, "mageflow_results": 2}
        assert [e["step"] for e in await harness.probe.events(ns, "echo")] == [1, 3]
        assert await harness.probe.events(ns, "gated") == [2, 2]
        (got,) = await self.events(harness, ns, "ok", 1)
        assert got["mageflow_results"] == {"step": 3, "mageflow_results": 2}
        assert len(await harness.probe.events(ns, "err")) == 1

    async def test_retried_swarm_reruns_only_failed_and_stopped_items(
        self, harness: ContractHarness
    ) -> None:
        """Items 1 and 3 fail, the second failure stops the swarm before item 4 starts;
        retry runs 1, 3 and 4 only, and the callback fires once with every result."""
        ns = _ns()
        app = harness.app
        ok = await app.sign("contract.total", ns=ns)
        err = await app.sign("contract.collect", ns=ns, tag="err")
        items = [
            await app.sign("contract.gated" if i % 2 else "contract.slow", id=i) for i in range(5)
        ]
        sw = await app.swarm(
            items,
            success_callbacks=[ok],
            error_callbacks=[err],
            config=SwarmConfig(max_concurrency=1, stop_after_n_failures=2),
            is_swarm_closed=True,
        )
        await self._fails(harness, sw, {"ns": ns}, [err])
        assert await harness.probe.events(ns, "slow-start") == [0, 2]
        await harness.probe.set_flag(ns, "open")
        await sw.retry()
        assert await sw.wait(timeout=harness.timeout) == [0, 1, 2, 3, 4]
        (got,) = await self.events(harness, ns, "total", 1)
        assert got == [0, 1, 2, 3, 4]
        assert await harness.probe.events(ns, "slow-start") == [0, 2, 4]
        assert await harness.probe.events(ns, "gated") == [1, 3, 1, 3]
        assert len(await harness.probe.events(ns, "err")) == 1

    async def test_retry_reruns_a_failed_swarm_inside_a_chain(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        inner = await app.swarm(
            [
                await app.sign("contract.slow", ns=ns, id="a"),
                await app.sign("contract.gated", ns=ns, id="b"),
            ],
            config=SwarmConfig(stop_after_n_failures=1),
            is_swarm_closed=True,
        )
        total = await app.sign("contract.total", ns=ns)
        wf = await app.chain([await app.sign("contract.echo", ns=ns, step=1), inner, total])
        await self._fails(harness, wf, {"ns": ns})
        assert await harness.probe.events(ns, "total") == []
        await harness.probe.set_flag(ns, "open")
        await wf.retry()
        assert await wf.wait(timeout=harness.timeout) == 0
        assert await harness.probe.events(ns, "total") == [["a", "b"]]
        assert len(await harness.probe.events(ns, "echo")) == 1
        assert await harness.probe.events(ns, "slow-start") == ["a"]
        assert await harness.probe.events(ns, "gated") == ["b", "b"]

    async def test_error_callbacks_fire_again_on_a_second_failure(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        ok = await app.sign("contract.collect", ns=ns, tag="ok")
        err = await app.sign("contract.collect", ns=ns, tag="err")
        sig = await app.sign("contract.gated", id=1, success_callbacks=[ok], error_callbacks=[err])
        await self._fails(harness, sig, {"ns": ns}, [err])
        await sig.retry()  # the gate is still closed: it fails again
        await self._fails(harness, sig, None, [err])
        assert len(await harness.probe.events(ns, "err")) == 2
        await harness.probe.set_flag(ns, "open")
        await sig.retry()
        assert await sig.wait(timeout=harness.timeout) == 1
        assert len(await self.events(harness, ns, "ok", 1)) == 1
        assert len(await harness.probe.events(ns, "err")) == 2
        assert await harness.probe.events(ns, "gated") == [1, 1, 1]

    async def test_retry_is_refused_unless_failed_and_finished(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.echo")
        await done.aio_run({"ns": ns}, timeout=harness.timeout)
        with pytest.raises(WorkflowNotFailedError, match="done"):
            await done.retry()
        running = await app.sign("contract.block", id="running")
        await running.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await until_active(harness, running)
        with pytest.raises(WorkflowNotFailedError, match="active"):
            await running.retry()
        await harness.probe.set_flag(ns, "release")
        assert await running.wait(timeout=harness.timeout) == "released"

        ns = _ns()
        on_err = await app.sign("contract.block", id="on-error")
        sig = await app.sign("contract.gated", id=1, error_callbacks=[on_err])
        await self._fails(harness, sig, {"ns": ns})
        await self._started(harness, ns)
        with pytest.raises(WorkflowBusyError):
            await sig.retry()  # its error callback still runs
        await harness.probe.set_flag(ns, "release")
        await on_err.wait(timeout=harness.timeout)
        await harness.probe.set_flag(ns, "open")
        await sig.retry()
        assert await sig.wait(timeout=harness.timeout) == 1
