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

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mageflow.app import Mageflow
from mageflow.backend.base import HEADER_KEY, OutgoingTask
from mageflow.errors import (
    PayloadNotSerializableError,
    SwarmClosedError,
    TaskFailedError,
    TaskNotRegisteredError,
    WorkflowFinishedError,
)
from mageflow.flows import faults
from mageflow.models.config import SwarmConfig
from mageflow.models.status import SignatureStatus
from mageflow.store.base import split_key
from mageflow.testing.contract_tasks import RETRIES
from mageflow.testing.probe import Probe


@dataclass
class ContractHarness:
    """What an adapter hands the suite."""

    app: Mageflow
    probe: Probe
    fault_dir: Path | None = None
    """Directory the workers read fault files from (``MAGEFLOW_FAULT_DIR``); ``None``
    skips the crash-window test."""
    redelivers_after_crash: bool = True
    """The task manager redelivers a message whose worker died before acknowledging it."""
    timeout: float = 30.0
    """Upper bound for one workflow to finish."""
    settle: float = 0.5
    """How long to wait before asserting that something did *not* happen."""
    worker_slots: int = 3
    """Tasks the workers can run at once in total (the concurrency test needs >= 3)."""


def _ns() -> str:
    return uuid.uuid4().hex[:12]


class BackendContract:
    """Subclass and provide the ``harness`` fixture."""

    pytestmark = pytest.mark.asyncio(loop_scope="session")

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    async def events(h: ContractHarness, ns: str, event: str, n: int) -> list[Any]:
        """Wait until ``event`` happened ``n`` times, then let ``settle`` pass and check it
        did not happen more often."""

        async def enough() -> bool:
            return len(await h.probe.events(ns, event)) >= n

        await h.probe.wait_until(enough, h.timeout, f"{n} x {event!r}")
        await asyncio.sleep(h.settle)
        found = await h.probe.events(ns, event)
        assert len(found) == n, f"{event!r} happened {len(found)} times, expected {n}: {found}"
        return found

    @staticmethod
    def require(h: ContractHarness, capability: str, meaning: str) -> None:
        if not getattr(h.app.backend.capabilities, capability):
            pytest.skip(f"backend {h.app.backend.name!r} lacks {capability}: {meaning}")

    # -- signatures and callbacks ----------------------------------------------------------
    async def test_kwargs_merge_into_message(self, harness: ContractHarness) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.echo", a=1, b="kw")
        result = await sig.aio_run({"ns": ns, "b": "msg", "c": 3}, timeout=harness.timeout)
        assert result == {"a": 1, "b": "msg", "c": 3}
        assert await sig.get_status() is SignatureStatus.DONE

    async def test_input_validator_gives_model(self, harness: ContractHarness) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.add", y=2)
        assert await sig.aio_run({"ns": ns, "x": 40}, timeout=harness.timeout) == 42

    async def test_invalid_input_fails_names_field_and_worker_keeps_serving(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        on_error = await harness.app.sign("contract.collect", ns=ns, tag="err")
        sig = await harness.app.sign("contract.add", error_callbacks=[on_error])
        with pytest.raises(TaskFailedError) as info:
            await sig.aio_run({"ns": ns, "x": "not a number", "y": 1}, timeout=harness.timeout)
        assert info.value.error_type == "InvalidTaskInputError"
        assert "x" in (info.value.error_message or "")
        (got,) = await self.events(harness, ns, "err", 1)
        assert got["mageflow_error"]["type"] == "InvalidTaskInputError"
        again = await harness.app.sign("contract.add")
        assert await again.aio_run({"ns": ns, "x": 1, "y": 1}, timeout=harness.timeout) == 2

    async def test_success_callback_gets_return_value_field(self, harness: ContractHarness) -> None:
        ns = _ns()
        done = await harness.app.sign("contract.collect", ns=ns, tag="done")
        double = await harness.app.sign("contract.double", ns=ns, success_callbacks=[done])
        sig = await harness.app.sign("contract.add", success_callbacks=[double])
        assert await sig.aio_run({"ns": ns, "x": 2, "y": 3}, timeout=harness.timeout) == 5
        assert await self.events(harness, ns, "double", 1) == [5]
        (got,) = await self.events(harness, ns, "done", 1)
        assert got == {"tag": "done", "mageflow_results": 10}

    async def test_error_callback_fires_once_after_final_attempt(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        on_error = await harness.app.sign("contract.collect", ns=ns, tag="err", extra=1)
        on_ok = await harness.app.sign("contract.collect", ns=ns, tag="ok")
        sig = await harness.app.sign(
            "contract.fail", reason="boom", success_callbacks=[on_ok], error_callbacks=[on_error]
        )
        await sig.aio_run_no_wait({"ns": ns, "order": 7})
        (got,) = await self.events(harness, ns, "err", 1)
        attempts = await harness.probe.events(ns, "fail-attempt")
        assert len(attempts) == RETRIES + 1
        assert got["mageflow_error"] == {"type": "ValueError", "message": "boom"}
        assert got["order"] == 7
        assert got["extra"] == 1
        assert await harness.probe.events(ns, "ok") == []
        assert await sig.get_status() is SignatureStatus.FAILED

    async def test_retry_then_success_fires_only_success(self, harness: ContractHarness) -> None:
        ns = _ns()
        on_error = await harness.app.sign("contract.collect", ns=ns, tag="err")
        on_ok = await harness.app.sign("contract.collect", ns=ns, tag="ok")
        sig = await harness.app.sign(
            "contract.flaky", success_callbacks=[on_ok], error_callbacks=[on_error]
        )
        assert await sig.aio_run({"ns": ns, "fail_times": 1}, timeout=harness.timeout) == (
            "recovered"
        )
        assert len(await harness.probe.events(ns, "flaky-attempt")) == 2
        await self.events(harness, ns, "ok", 1)
        assert await harness.probe.events(ns, "err") == []
        state = await sig.get_state()
        assert state.attempts == 2

    async def test_timeout_is_a_failure_retried_then_reported(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        on_error = await harness.app.sign("contract.collect", ns=ns, tag="err")
        sig = await harness.app.sign("contract.sleepy", error_callbacks=[on_error])
        with pytest.raises(TaskFailedError) as info:
            await sig.aio_run({"ns": ns}, timeout=harness.timeout)
        assert info.value.error_type == "TaskTimeoutError"
        assert len(await harness.probe.events(ns, "sleepy-attempt")) == 2
        (got,) = await self.events(harness, ns, "err", 1)
        assert got["mageflow_error"]["type"] == "TaskTimeoutError"
        assert await sig.get_status() is SignatureStatus.FAILED

    # -- chains ------------------------------------------------------------------------------
    async def test_chain_passes_results_and_calls_success_once(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [
                await app.sign("contract.add", ns=ns),
                await app.sign("contract.double", ns=ns),
                await app.sign("contract.double", ns=ns),
            ],
            name="pipeline",
            success=done,
        )
        assert await wf.aio_run({"ns": ns, "x": 1, "y": 2}, timeout=harness.timeout) == 12
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == 12
        assert await harness.probe.events(ns, "double") == [3, 6]
        state = await wf.get_state()
        assert state.name == "pipeline"
        assert state.status is SignatureStatus.DONE

    async def test_failing_step_stops_chain_and_fires_both_error_callbacks(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        step_err = await app.sign("contract.collect", ns=ns, tag="step-err")
        chain_err = await app.sign("contract.collect", ns=ns, tag="chain-err")
        chain_ok = await app.sign("contract.collect", ns=ns, tag="chain-ok")
        wf = await app.chain(
            [
                await app.sign("contract.echo", ns=ns),
                await app.sign(
                    "contract.fail", ns=ns, reason="step broke", error_callbacks=[step_err]
                ),
                await app.sign("contract.echo", ns=ns, never=True),
            ],
            success=chain_ok,
            error=chain_err,
        )
        with pytest.raises(TaskFailedError):
            await wf.aio_run({"ns": ns, "first": 1}, timeout=harness.timeout)
        (s,) = await self.events(harness, ns, "step-err", 1)
        (c,) = await self.events(harness, ns, "chain-err", 1)
        assert s["mageflow_error"]["message"] == "step broke"
        assert c["mageflow_error"]["message"] == "step broke"
        assert c["first"] == 1, "the chain's error callback gets the chain's message"
        assert len(await harness.probe.events(ns, "echo")) == 1
        assert await harness.probe.events(ns, "chain-ok") == []

    # -- swarms --------------------------------------------------------------------------------
    async def test_swarm_results_in_item_order_callback_once(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        items = [
            await app.sign("contract.slow", id=i, seconds=0.05 * ((7 - i) % 4)) for i in range(8)
        ]
        sw = await app.swarm(items, success_callbacks=[done], config=SwarmConfig(max_concurrency=4))
        assert await sw.aio_run({"ns": ns}, timeout=harness.timeout) == list(range(8))
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == list(range(8))

    async def test_swarm_message_merge_item_wins(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        sw = await app.swarm(
            [await app.sign("contract.echo", a="item-kw", b="item-kw")], is_swarm_closed=False
        )
        await sw.aio_run_no_wait({"ns": ns, "a": "swarm", "b": "swarm", "s": 1})
        late = await sw.add_task("contract.echo", b="late-kw", c="late-kw")
        await late.aio_run_no_wait({"ns": ns, "c": "late-msg", "d": "late-msg"})
        await sw.close_swarm()
        results = await sw.wait(timeout=harness.timeout)
        assert results == [
            {"a": "item-kw", "b": "item-kw", "s": 1},
            {"a": "swarm", "b": "late-kw", "c": "late-msg", "d": "late-msg", "s": 1},
        ]

    async def test_swarm_never_exceeds_max_concurrency(self, harness: ContractHarness) -> None:
        assert harness.worker_slots >= 3, "the harness must offer >= 3 worker slots"
        ns = _ns()
        app = harness.app
        items = [await app.sign("contract.slow", id=i, seconds=0.15) for i in range(12)]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=2))
        assert await sw.aio_run({"ns": ns}, timeout=harness.timeout) == list(range(12))
        observed = await harness.probe.max_running(ns)
        assert observed == 2, f"observed {observed} items running at once with a cap of 2"

    async def test_swarm_stop_after_n_failures(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="err")
        on_ok = await app.sign("contract.collect", ns=ns, tag="ok")
        items = [await app.sign("contract.slow", id=i, fail=True) for i in range(2)]
        items += [await app.sign("contract.slow", id=10 + i, seconds=0.01) for i in range(6)]
        sw = await app.swarm(
            items,
            success_callbacks=[on_ok],
            error_callbacks=[on_error],
            config=SwarmConfig(max_concurrency=1, stop_after_n_failures=2),
        )
        with pytest.raises(TaskFailedError) as info:
            await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        assert info.value.error_type == "SwarmFailed"
        (got,) = await self.events(harness, ns, "err", 1)
        assert got["mageflow_error"]["type"] == "SwarmFailed"
        assert await harness.probe.events(ns, "ok") == []
        assert await harness.probe.events(ns, "slow-done") == [], "queued items must not start"

    async def test_swarm_failures_without_stop_still_succeed(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="err")
        items = [
            await app.sign("contract.slow", id=0),
            await app.sign("contract.slow", id=1, fail=True),
        ]
        sw = await app.swarm(items, error_callbacks=[on_error])
        results = await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        assert results[0] == 0
        assert results[1] == {"mageflow_error": {"type": "ValueError", "message": "item 1 failed"}}
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "err") == []

    async def test_add_task_then_close_completes_once(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        sw = await app.swarm(
            success_callbacks=[done], is_swarm_closed=False, config=SwarmConfig(max_concurrency=2)
        )
        assert not await sw.is_swarm_closed()
        await sw.aio_run_no_wait({"ns": ns})
        for i in range(4):
            item = await sw.add_task("contract.slow", seconds=0.01)
            await item.aio_run_no_wait({"id": i})
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "done") == [], "open swarm must not complete"
        await sw.close_swarm()
        assert await sw.is_swarm_closed()
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == [0, 1, 2, 3]

    async def test_adding_to_closed_swarm_raises_and_changes_nothing(
        self, harness: ContractHarness
    ) -> None:
        app = harness.app
        sw = await app.swarm([await app.sign("contract.echo")])
        before = await sw.get_state()
        with pytest.raises(SwarmClosedError):
            await sw.add_task("contract.echo")
        after = await sw.get_state()
        assert after.counts["total"] == before.counts["total"] == 1

    # -- nesting -------------------------------------------------------------------------------
    async def test_swarm_as_chain_step_hands_list_to_next(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        inner = await app.swarm(
            [await app.sign("contract.double", ns=ns) for _ in range(3)],
            config=SwarmConfig(max_concurrency=2),
        )
        wf = await app.chain(
            [await app.sign("contract.add", ns=ns), inner, await app.sign("contract.total", ns=ns)]
        )
        assert await wf.aio_run({"ns": ns, "x": 1, "y": 1}, timeout=harness.timeout) == 12
        assert await harness.probe.events(ns, "total") == [[4, 4, 4]]

    async def test_chain_as_swarm_item(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        chains = [
            await app.chain(
                [await app.sign("contract.add", x=i, y=i), await app.sign("contract.double", ns=ns)]
            )
            for i in range(3)
        ]
        sw = await app.swarm(chains, config=SwarmConfig(max_concurrency=2))
        assert await sw.aio_run({"ns": ns}, timeout=harness.timeout) == [0, 4, 8]

    # -- lifecycle -------------------------------------------------------------------------------
    async def _started(self, h: ContractHarness, ns: str, n: int = 1) -> None:
        async def started() -> bool:
            return len(await h.probe.events(ns, "block-start")) >= n

        await h.probe.wait_until(started, h.timeout, "the blocking task to start")

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
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1))
        await sw.aio_run_no_wait({"ns": ns})
        await self._started(harness, ns)
        await sw.suspend()
        await harness.probe.set_flag(ns, "release")
        await self.events(harness, ns, "block-done", 1)
        assert await harness.probe.events(ns, "echo") == []
        await sw.resume()
        assert len(await sw.wait(timeout=harness.timeout)) == 4
        assert len(await harness.probe.events(ns, "echo")) == 3

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
        assert await sig.get_status() is SignatureStatus.ACTIVE
        await harness.probe.set_flag(ns, "release")
        assert await sig.wait(timeout=harness.timeout) == "released"
        assert await sig.get_status() is SignatureStatus.DONE
        loaded = await harness.app.load(sig.key)
        assert (await loaded.get_state()).result == "released"

    # -- exactly-once advancement ---------------------------------------------------------------
    async def _republish(self, h: ContractHarness, key: str, task_name: str) -> None:
        """Publish the payload a signature already received once more (new run id), as
        a broker duplicate or a re-issued publish would."""
        wf, sid = split_key(key)
        (payload,) = await h.app.store.read(wf, [f"{sid}:pl"])
        assert payload is not None
        await h.app.backend.publish(OutgoingTask(task_name, json.loads(payload), {HEADER_KEY: key}))

    async def test_duplicate_delivery_changes_nothing(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [
                await app.sign("contract.echo", step=1),
                await app.sign("contract.echo", ns=ns, step=2),
            ],
            success=done,
        )
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
        """The worker dies after storing "step 1 done" and before publishing step 2: the
        redelivered step 1 must re-issue step 2 without running step 1's code again."""
        if harness.fault_dir is None or not harness.redelivers_after_crash:
            pytest.skip(f"backend {harness.app.backend.name!r} does not redeliver after a crash")
        assert harness.fault_dir is not None
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        wf = await app.chain(
            [await app.sign("contract.add", y=1), await app.sign("contract.double", ns=ns)],
            success=done,
        )
        faults.arm(harness.fault_dir, faults.AFTER_FINISH, "contract.add")
        assert await wf.aio_run({"ns": ns, "x": 1}, timeout=harness.timeout) == 4
        assert not (harness.fault_dir / f"{faults.AFTER_FINISH}__contract.add").exists(), (
            "the fault never fired"
        )
        assert len(await self.events(harness, ns, "add", 1)) == 1
        assert len(await self.events(harness, ns, "double", 1)) == 1
        assert len(await self.events(harness, ns, "done", 1)) == 1

    # -- bad input --------------------------------------------------------------------------------
    async def test_payload_not_json_raises_and_writes_nothing(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.echo")
        with pytest.raises(PayloadNotSerializableError):
            await sig.aio_run_no_wait({"ns": ns, "when": object()})
        assert await sig.get_status() is SignatureStatus.PENDING
        assert await sig.aio_run({"ns": ns, "ok": True}, timeout=harness.timeout) == {"ok": True}
        with pytest.raises(PayloadNotSerializableError):
            await harness.app.sign("contract.echo", handle=object())

    async def test_result_not_json_fails_task_and_worker_keeps_serving(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.bad_result")
        with pytest.raises(TaskFailedError) as info:
            await sig.aio_run({"ns": ns}, timeout=harness.timeout)
        assert info.value.error_type == "PayloadNotSerializableError"
        again = await harness.app.sign("contract.echo")
        assert await again.aio_run({"ns": ns, "k": 1}, timeout=harness.timeout) == {"k": 1}

    async def test_unknown_task_name_raises_and_worker_keeps_serving(
        self, harness: ContractHarness
    ) -> None:
        with pytest.raises(TaskNotRegisteredError, match=r"contract\.echo"):
            await harness.app.sign("contract.no-such-task")
        with pytest.raises(TaskNotRegisteredError):
            await harness.app.chain(["contract.echo", "contract.no-such-task"])
        sig = await harness.app.sign("contract.echo")
        assert await sig.aio_run({"ns": _ns(), "k": 2}, timeout=harness.timeout) == {"k": 2}
