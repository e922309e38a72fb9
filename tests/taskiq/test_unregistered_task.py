"""A chain step naming a task the taskiq workers do not serve fails, loudly, on real workers.

taskiq's receiver acknowledges and drops a message whose task name the worker has no task
for (it logs a warning): the step stayed pending and ``aio_run`` waited for ever. The
adapter now hands such a message to the core, which fails the node with
``TaskNotRegisteredError`` so that the error callbacks fire, once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from mageflow.errors import TaskFailedError
from mageflow.models.status import SignatureStatus
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize("kind", ["mageflow", "taskiq"])
async def test_a_step_the_workers_do_not_serve_fails_and_its_callbacks_fire_once(
    kind: str, redis_url: str, make_app_workers: MakeAppWorkers
) -> None:
    pool = make_app_workers()
    pool.start(kind, processes=1, concurrency=2)
    app = pool.client_app()
    contract_tasks.register(app)

    @app.task("client-only.step")  # registered here, not in contract_app: no worker has it
    async def client_only(message: dict[str, Any]) -> None:
        raise AssertionError("no worker serves this task")

    probe = RedisProbe(redis_url)
    rdb = aioredis.Redis.from_url(redis_url)
    ns = uuid.uuid4().hex[:12]
    try:
        await pool.wait_ready(1, rdb)
        step = await app.sign(
            "client-only.step",
            ns=ns,
            error_callbacks=[await app.sign("contract.collect", tag="step-error")],
        )
        chain = await app.chain(
            ["contract.echo", step],
            error=await app.sign("contract.collect", tag="chain-error"),
        )
        with pytest.raises(TaskFailedError) as info:
            await chain.aio_run({"ns": ns, "k": 1}, timeout=30)
        assert info.value.error_type == "TaskNotRegisteredError"
        assert "'client-only.step' is not registered" in (info.value.error_message or "")

        async def both_fired() -> bool:
            return all([await probe.events(ns, t) for t in ("step-error", "chain-error")])

        await probe.wait_until(both_fired, 30, "the error callbacks")
        await asyncio.sleep(0.5)  # nothing fires twice
        for tag in ("step-error", "chain-error"):
            fired = await probe.events(ns, tag)
            assert len(fired) == 1, fired
            assert fired[0]["mageflow_error"]["type"] == "TaskNotRegisteredError"
        assert await probe.events(ns, "echo") == [{"k": 1}]
        state = await step.get_state()
        assert (state.status, state.attempts) == (SignatureStatus.FAILED, 1)
        assert "client-only.step" in pool.logs()  # the worker says so in its log
    finally:
        pool.stop_all()
        await app.aclose()
        await probe.close()
        await rdb.aclose()
