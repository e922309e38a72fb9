"""The operator CLI against a workflow running on real taskiq workers: the CLI is its own
process, configured only by the environment, and `resume` publishes through the broker."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import AppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def cli(pool: AppWorkers, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mageflow",
        *args,
        env={**pool.env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_reads_a_chain_with_nested_swarm(
    running: tuple[AppWorkers, Mageflow, RedisProbe],
) -> None:
    pool, app, _ = running
    ns = uuid.uuid4().hex[:8]
    inner = await app.swarm(
        [await app.sign("contract.double", ns=ns) for _ in range(3)],
        config=SwarmConfig(max_concurrency=2),
        task_name="doubles",
        is_swarm_closed=True,
    )
    wf = await app.chain(
        [await app.sign("contract.add", ns=ns), inner, await app.sign("contract.total", ns=ns)],
        name=f"tq-{ns}",
    )
    await wf.aio_run_no_wait({"ns": ns, "x": 1, "y": 2})
    code, out = await cli(pool, "watch", wf.key, "--interval", "0.1", "--timeout", "60")
    assert code == 0, out
    assert "finished: done" in out

    code, out = await cli(pool, "status", "--json", wf.key)
    assert json.loads(out)["result"] == 18
    code, out = await cli(pool, "tree", wf.key)
    assert f"chain tq-{ns} done" in out
    assert "swarm doubles done" in out
    assert out.count("task contract.double done") == 3
    code, out = await cli(pool, "ls", "--name", f"tq-{ns}")
    assert wf.key in out
    # acknowledged messages are deleted: the stream holds only what is queued or running
    rdb = aioredis.Redis.from_url(pool.redis_url)
    try:
        assert await rdb.xlen(pool.queue) == 0
    finally:
        await rdb.aclose()


async def test_cli_suspend_then_resume_through_the_broker(
    running: tuple[AppWorkers, Mageflow, RedisProbe],
) -> None:
    pool, app, probe = running
    ns = uuid.uuid4().hex[:8]
    wf = await app.chain(
        [await app.sign("contract.block", id="b"), await app.sign("contract.echo", ns=ns, step=2)]
    )
    await wf.aio_run_no_wait({"ns": ns})

    async def started() -> bool:
        return bool(await probe.events(ns, "block-start"))

    await probe.wait_until(started, 30, "the blocking step to start")
    code, out = await cli(pool, "interrupt", wf.key)  # taskiq cannot cancel: a suspend
    assert code == 0, out
    assert "interrupted" in out
    await probe.set_flag(ns, "release")

    async def block_done() -> bool:
        return bool(await probe.events(ns, "block-done"))

    await probe.wait_until(block_done, 30, "the running step to finish")
    await asyncio.sleep(0.5)
    assert await probe.events(ns, "echo") == [], "nothing may start while interrupted"
    code, out = await cli(pool, "resume", wf.key)
    assert code == 0, out
    assert await wf.wait(timeout=30) == {"step": 2, "mageflow_results": "released"}
    assert len(await probe.events(ns, "echo")) == 1


async def test_cli_suspend_then_cancel(running: tuple[AppWorkers, Mageflow, RedisProbe]) -> None:
    pool, app, probe = running
    ns = uuid.uuid4().hex[:8]
    wf = await app.chain(
        [await app.sign("contract.block", id="b"), await app.sign("contract.echo", ns=ns, step=2)]
    )
    await wf.aio_run_no_wait({"ns": ns})

    async def started() -> bool:
        return bool(await probe.events(ns, "block-start"))

    await probe.wait_until(started, 30, "the blocking step to start")
    code, out = await cli(pool, "suspend", wf.key)
    assert code == 0, out
    code, out = await cli(pool, "status", "--json", wf.key)
    assert json.loads(out)["status"] == "suspended"
    code, out = await cli(pool, "cancel", wf.key)
    assert code == 0, out
    assert "canceled" in out
    await probe.set_flag(ns, "release")

    async def block_done() -> bool:
        return bool(await probe.events(ns, "block-done"))

    await probe.wait_until(block_done, 30, "the running step to finish")
    await asyncio.sleep(0.5)
    assert await probe.events(ns, "echo") == []
    code, out = await cli(pool, "resume", wf.key)
    assert code == 2
    assert "already finished (canceled)" in out


async def test_cli_retry_through_the_broker(
    running: tuple[AppWorkers, Mageflow, RedisProbe],
) -> None:
    """``mageflow retry`` configured by the environment only: the failed step runs again
    on the taskiq workers, the done step does not."""
    pool, app, probe = running
    ns = uuid.uuid4().hex[:8]
    wf = await app.chain(
        [
            await app.sign("contract.echo", ns=ns, step=1),
            await app.sign("contract.gated", ns=ns, id=2),
        ]
    )
    await wf.aio_run_no_wait({"ns": ns})
    code, out = await cli(pool, "watch", wf.key, "--interval", "0.1", "--timeout", "60")
    assert code == 1, out
    await probe.set_flag(ns, "open")
    code, out = await cli(pool, "retry", wf.key)
    assert code == 0, out
    assert await wf.wait(timeout=30) == 2
    assert len(await probe.events(ns, "echo")) == 1
    assert await probe.events(ns, "gated") == [2, 2]
