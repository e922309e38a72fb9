"""Signatures: kwargs, identifiers, input validation, callbacks, retries, timeouts."""

from __future__ import annotations

import itertools

import pytest

from mageflow.errors import TaskFailedError, WaitTimeoutError
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns
from mageflow.testing.contract_tasks import BACKOFF, RETRIES


class SignatureContract(ContractBase):
    """Signatures: kwargs, identifiers, input validation, callbacks, retries, timeouts."""

    async def test_kwargs_merge_into_message(self, harness: ContractHarness) -> None:
        ns = _ns()
        sig = await harness.app.sign("contract.echo", a=1, b="kw")
        result = await sig.aio_run({"ns": ns, "b": "msg", "c": 3}, timeout=harness.timeout)
        assert result == {"a": 1, "b": "msg", "c": 3}
        assert await sig.get_status() is SignatureStatus.DONE

    @pytest.mark.parametrize("task", ["contract.whoami", "contract.whoami_sync"])
    async def test_identifiers_reach_the_task_not_its_message(
        self, harness: ContractHarness, task: str
    ) -> None:
        ns = _ns()
        ids = {"order_id": "12345", "shard": 7}
        sig = await harness.app.sign(task, task_identifiers=ids, a=1)
        got = await sig.aio_run({"ns": ns}, timeout=harness.timeout)
        assert got["message"] == {"a": 1}
        me = got["me"]
        assert me["identifiers"] == ids
        assert (me["key"], me["task_name"], me["attempt"]) == (sig.key, task, 1)
        assert me["run_id"]

    async def test_identifiers_follow_moved_steps_and_added_items(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        step = await app.sign("contract.whoami", task_identifiers={"order_id": ns})
        wf = await app.chain(["contract.echo", step])
        got = await wf.aio_run({"ns": ns}, timeout=harness.timeout)
        assert got["me"]["identifiers"] == {"order_id": ns}
        assert got["me"]["key"] == step.key and step.key.startswith(wf.key)
        assert await app.find_by_identifiers({"order_id": ns}) == [step.key]

        sw = await app.swarm()
        await sw.aio_run_no_wait({"ns": ns})
        item = await sw.add_task("contract.whoami", task_identifiers={"item": ns}, b=2)
        await item.aio_run_no_wait({"ns": ns})
        await sw.close_swarm()
        (res,) = await sw.wait(timeout=harness.timeout)
        assert res["me"]["identifiers"] == {"item": ns}
        assert res["me"]["key"] == item.key and res["message"] == {"b": 2}
        assert await app.find_by_identifiers({"item": ns}) == [item.key]

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

    async def test_retries_wait_their_backoff(self, harness: ContractHarness) -> None:
        """Each retry starts no earlier than its backoff's shortest delay after the failed
        attempt started (lower bounds only: how much later depends on the machine)."""
        ns = _ns()
        sig = await harness.app.sign("contract.backoff")
        assert await sig.aio_run({"ns": ns}, timeout=harness.timeout) == "recovered"
        started = await harness.probe.events(ns, "backoff-attempt")
        assert len(started) == RETRIES + 1
        for retry, (failed, retried) in enumerate(itertools.pairwise(started), start=1):
            shortest, _ = BACKOFF.bounds(retry)
            assert retried - failed >= shortest, (
                f"retry {retry} started {retried - failed:.3f} s after the failed attempt, "
                f"before its backoff of at least {shortest} s"
            )
        assert (await sig.get_state()).attempts == RETRIES + 1

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

    async def test_wait_timeout_raises_wait_timeout_error(self, harness: ContractHarness) -> None:
        """Giving up on the wait is ``WaitTimeoutError`` (a ``TimeoutError``) on every
        Python, and leaves the task running."""
        ns = _ns()
        sig = await harness.app.sign("contract.block")
        with pytest.raises(WaitTimeoutError):
            await sig.aio_run({"ns": ns}, timeout=harness.settle)
        await self._started(harness, ns)
        await harness.probe.set_flag(ns, "release")
        assert await sig.wait(timeout=harness.timeout) == "released"
