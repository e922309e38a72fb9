"""On ``local``, a later step naming a task this process does not serve fails its node.

The workflow is built by one instance (which has the task) and run by another sharing the
same Redis store (which has not): a deploy that removed a task, with its workflows still
stored. The publish of that step happens on a worker, after step 1's finish was recorded;
raising there used to leave the step pending for ever.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mageflow import Mageflow
from mageflow.backend.base import OutgoingTask
from mageflow.backend.local import LocalBackend
from mageflow.errors import TaskFailedError, TaskNotRegisteredError
from mageflow.models.status import SignatureStatus
from mageflow.store import RedisStore


async def test_a_step_nobody_serves_fails_with_task_not_registered(redis_url: str) -> None:
    prefix = f"unreg-{uuid.uuid4().hex[:8]}"
    builder = Mageflow(backend=LocalBackend(), store=RedisStore(redis_url, prefix=prefix))
    runner = Mageflow(backend=LocalBackend(), store=RedisStore(redis_url, prefix=prefix))
    errors: list[dict[str, Any]] = []

    async def first(msg: dict[str, Any]) -> int:
        return 1

    async def on_error(msg: dict[str, Any]) -> None:
        errors.append(msg["mageflow_error"])

    async def gone(msg: dict[str, Any]) -> int:
        raise AssertionError("the runner does not serve this task")

    for app in (builder, runner):
        app.task("unreg.first")(first)
        app.task("unreg.on-error")(on_error)
    builder.task("unreg.gone")(gone)

    built = await builder.chain(["unreg.first", "unreg.gone"], error="unreg.on-error")
    chain = await runner.load(built.key)
    with pytest.raises(TaskFailedError) as info:
        await chain.aio_run({}, timeout=10)
    assert info.value.error_type == "TaskNotRegisteredError"
    assert "'unreg.gone' is not registered" in (info.value.error_message or "")
    await runner.backend.join(5)  # type: ignore[attr-defined]
    assert [e["type"] for e in errors] == ["TaskNotRegisteredError"]
    first_step, gone_step = (await chain.get_state()).children
    assert await (await runner.load(first_step)).get_status() is SignatureStatus.DONE
    assert await (await runner.load(gone_step)).get_status() is SignatureStatus.FAILED

    # without a fallback (a LocalBackend used on its own) the publish still refuses
    with pytest.raises(TaskNotRegisteredError):
        await LocalBackend().publish(OutgoingTask("unreg.gone", {}, {}))
    await builder.aclose()
    await runner.aclose()
