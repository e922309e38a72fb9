"""Duplicate deliveries and the crash window between a transition and its publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mageflow import faults
from mageflow.backend.base import HEADER_KEY, OutgoingTask
from mageflow.flows.handles import Signature
from mageflow.flows.publish import ATTEMPTS
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


def _check_publish_fault(harness: ContractHarness, armed: Path) -> None:
    """A publish fault armed on step 2 fired, unless the engine appended step 2 to the
    broker's stream itself (stream delivery): then no worker published it at all."""
    if harness.stream_delivery:
        assert armed.exists(), "a worker published step 2 despite the stream delivery"
    else:
        assert not armed.exists(), "the fault never fired"


class ExactlyOnceContract(ContractBase):
    """Duplicate deliveries and the crash window between a transition and its publishes."""

    async def _republish(self, h: ContractHarness, key: str, task_name: str) -> None:
        """Publish the payload a signature already received once more (new run id), as
        a broker duplicate or a re-issued publish would."""
        payload = await h.app.engine.payload(key)
        assert payload is not None
        await h.app.backend.publish(OutgoingTask(task_name, json.loads(payload), {HEADER_KEY: key}))

    async def test_duplicate_delivery_changes_nothing(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await _two_echoes(harness, ns, done)
        await wf.aio_run({"ns": ns}, timeout=harness.timeout)
        state = await wf.get_state()
        for step in state.children:
            await self._republish(harness, step, "contract.echo")
        await asyncio.sleep(harness.settle)
        assert len(await self.events(harness, ns, "echo", 2)) == 2
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_duplicate_swarm_item_counts_once(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        sw = await app.swarm(
            [await app.sign("contract.block", id=0), await app.sign("contract.echo", id=1)],
            success_callbacks=[done],
            is_swarm_closed=True,
        )
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        state = await sw.get_state()
        echo_key = state.children[1]

        async def echo_done() -> bool:
            return len(await harness.probe.events(ns, "echo")) >= 1

        await harness.probe.wait_until(echo_done, harness.timeout, "the echo item")
        await asyncio.sleep(harness.settle)
        await self._republish(harness, echo_key, "contract.echo")
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "done") == [], "a duplicate must not complete it"
        await harness.probe.set_flag(ns, "release")
        assert len(await sw.wait(timeout=harness.timeout)) == 2
        assert len(await self.events(harness, ns, "done", 1)) == 1
        assert len(await harness.probe.events(ns, "echo")) == 1

    async def test_crash_between_transition_and_publish(self, harness: ContractHarness) -> None:
        """The worker dies after storing "step 1 done" and before publishing step 2: a
        redelivered step 1 re-issues step 2 without running step 1's code again; without
        redelivery the reconciler re-sends step 2."""
        if harness.fault_dir is None:
            pytest.skip(f"the {harness.app.backend.name!r} harness cannot crash its workers")
        ns = _ns()
        wf = await _add_then_double(harness, ns)
        faults.arm(harness.fault_dir, faults.AFTER_FINISH, "contract.add")
        assert await wf.aio_run({"ns": ns, "x": 1}, timeout=harness.timeout) == 4
        assert not (harness.fault_dir / f"{faults.AFTER_FINISH}__contract.add").exists(), (
            "the fault never fired"
        )
        assert len(await self.events(harness, ns, "add", 1)) == 1
        await asyncio.sleep(harness.settle)  # the chain finished: step 2 ran at least once
        doubles = await harness.probe.events(ns, "double")
        if harness.stream_delivery and len(doubles) == 2:
            # step 2's message is in the stream as soon as step 1's transition commits, so
            # the worker the fault kills may already have taken it and run it (a first
            # delivery runs at once) before it died: the broker hands it to another worker.
            # At least once after a crash, never twice in one process.
            # every run records its pid before its value (a kill between them leaves a pid)
            pids = await harness.probe.events(ns, "double-pid")
            assert len(pids) >= 2 and len(set(pids)) == len(pids), (
                f"step 2 ran twice in one process: {pids}"
            )
        else:
            assert len(doubles) == 1, f"step 2 ran {len(doubles)} times: {doubles}"
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_publish_fails_once_on_final_attempt(self, harness: ContractHarness) -> None:
        """The publish of step 2 raises once on the worker that finished step 1 (its only
        attempt): it is retried, the chain finishes, nothing runs twice."""
        if harness.fault_dir is None:
            pytest.skip(f"the {harness.app.backend.name!r} harness has no fault directory")
        ns = _ns()
        wf = await _add_then_double(harness, ns)
        armed = faults.arm(harness.fault_dir, faults.PUBLISH, "contract.double")
        assert await wf.aio_run({"ns": ns, "x": 2}, timeout=harness.timeout) == 6
        _check_publish_fault(harness, armed)
        assert len(await self.events(harness, ns, "add", 1)) == 1
        assert len(await self.events(harness, ns, "double", 1)) == 1
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_publish_outage_is_reconciled(self, harness: ContractHarness) -> None:
        """The publish of step 2 keeps failing past every retry: step 1 is not failed for
        it, and the reconciler re-sends step 2 once publishing works again."""
        if harness.fault_dir is None:
            pytest.skip(f"the {harness.app.backend.name!r} harness has no fault directory")
        ns = _ns()
        wf = await _add_then_double(harness, ns)
        armed = faults.arm(harness.fault_dir, faults.PUBLISH, "contract.double", ATTEMPTS + 1)
        assert await wf.aio_run({"ns": ns, "x": 2}, timeout=harness.timeout) == 6
        _check_publish_fault(harness, armed)
        assert (await wf.get_state()).children  # the chain is intact
        assert len(await self.events(harness, ns, "add", 1)) == 1
        assert len(await self.events(harness, ns, "double", 1)) == 1
        assert len(await self.events(harness, ns, "done", 1)) == 1

    @pytest.mark.parametrize("op", ["start", "finish"])
    async def test_store_outage_at_start_or_finish_is_waited_out(
        self, harness: ContractHarness, op: str
    ) -> None:
        """The store is unreachable when the worker records step 1's start (or finish),
        three times in a row: the worker retries until it answers, never acknowledging
        an unrecorded delivery; the chain finishes once, step 1's code ran once. With
        stream delivery a first delivery received soon after its dispatch records its
        start with its finish: then no start transition meets the outage."""
        if harness.fault_dir is None:
            pytest.skip(f"the {harness.app.backend.name!r} harness has no fault directory")
        ns = _ns()
        wf = await _add_then_double(harness, ns)
        armed = faults.arm(harness.fault_dir, faults.STORE, f"{op}:contract.add", 3)
        assert await wf.aio_run({"ns": ns, "x": 3}, timeout=harness.timeout) == 8
        if op == "finish" or not harness.stream_delivery:
            assert not armed.exists(), "the fault never fired"
        assert len(await self.events(harness, ns, "add", 1)) == 1
        assert len(await self.events(harness, ns, "double", 1)) == 1
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_client_dies_between_run_and_publish(self, harness: ContractHarness) -> None:
        """The client records the run, then dies before publishing: the reconciler sends
        the first step; the workflow finishes exactly once."""
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await _two_echoes(harness, ns, done)
        with client_crash(harness, faults.AFTER_RUN), pytest.raises(faults.SimulatedCrash):
            await wf.aio_run_no_wait({"ns": ns})
        await wf.wait(timeout=harness.timeout)
        assert [e["step"] for e in await self.events(harness, ns, "echo", 2)] == [1, 2]
        assert len(await self.events(harness, ns, "done", 1)) == 1

    async def test_client_dies_between_close_and_publish(self, harness: ContractHarness) -> None:
        """``close_swarm`` queues the items added to an open swarm, then the client dies
        before publishing them: the reconciler sends them; the callback fires once."""
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.total", ns=ns)
        sw = await app.swarm(success_callbacks=[done], is_swarm_closed=False)
        await sw.aio_run_no_wait({"ns": ns})
        for i in range(3):
            await sw.add_task(await app.sign("contract.add", x=i, y=1))
        with client_crash(harness, faults.AFTER_CLOSE), pytest.raises(faults.SimulatedCrash):
            await sw.close_swarm()
        assert await sw.wait(timeout=harness.timeout) == [1, 2, 3]
        assert len(await self.events(harness, ns, "add", 3)) == 3
        assert await self.events(harness, ns, "total", 1) == [[1, 2, 3]]


async def _add_then_double(harness: ContractHarness, ns: str) -> Signature:
    """``contract.add`` (y=1) then ``contract.double``, with a ``done`` collector."""
    app = harness.app
    done = await app.sign("contract.collect", ns=ns, tag="done")
    return await app.chain(
        [await app.sign("contract.add", y=1), await app.sign("contract.double", ns=ns)],
        success=done,
    )


async def _two_echoes(harness: ContractHarness, ns: str, done: Signature) -> Signature:
    """A chain of two ``contract.echo`` steps (``step`` 1 and 2) with ``done`` on success."""
    app = harness.app
    return await app.chain(
        [await app.sign("contract.echo", step=1), await app.sign("contract.echo", ns=ns, step=2)],
        success=done,
    )


@contextlib.contextmanager
def client_crash(harness: ContractHarness, point: str) -> Iterator[None]:
    """Arm a crash of this (the client's) process at ``point``: in-process it raises
    :class:`faults.SimulatedCrash`, exactly where a real client would have died."""
    previous = faults.configured()
    directory = previous or harness.fault_dir
    if directory is None:
        with tempfile.TemporaryDirectory() as tmp:
            faults.configure(tmp)
            faults.arm(tmp, point, faults.CLIENT)
            try:
                yield
            finally:
                faults.configure(previous)
        return
    faults.configure(directory)
    faults.arm(directory, point, faults.CLIENT)
    try:
        yield
    finally:
        faults.configure(previous)
