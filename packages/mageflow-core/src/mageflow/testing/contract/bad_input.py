"""Bad input gets a typed error and the worker keeps serving."""

from __future__ import annotations

import pytest

from mageflow.errors import (
    PayloadNotSerializableError,
    TaskFailedError,
    TaskNotRegisteredError,
)
from mageflow.models.status import SignatureStatus
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class BadInputContract(ContractBase):
    """Bad input gets a typed error and the worker keeps serving."""

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
