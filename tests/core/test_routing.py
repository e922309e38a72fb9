"""Routing to queues (issue 10 item 7) in the core: where the queue comes from, what is
refused, and what ``mageflow status`` says about a task that waits for its queue."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import pytest

from mageflow import Mageflow, Options
from mageflow.backend.local import LocalBackend
from mageflow.errors import CapabilityNotSupportedError, InvalidOptionsError
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend
from tests.core.stores import manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


def app_on_manual() -> Mageflow:
    mf = Mageflow(backend=ManualBackend(), store=MemoryStore())

    @mf.task("gpu.render", queue="gpu")
    async def render(msg: dict[str, Any]) -> str:
        return "rendered"

    @mf.task("plain")
    async def plain(msg: dict[str, Any]) -> str:
        return "plain"

    return mf


async def test_registered_queue_is_the_default_and_options_override_it() -> None:
    mf = app_on_manual()
    for sig in (
        await mf.sign("gpu.render"),
        await mf.sign("gpu.render", mageflow_options=Options(queue="big-gpu")),
        await mf.sign("plain"),
        await mf.sign("plain", mageflow_options=Options(queue="io")),
    ):
        await sig.aio_run_no_wait({})
    queues = [sent.task.queue for sent in manual(mf).take()]
    assert queues == ["gpu", "big-gpu", None, "io"]
    chain = await mf.chain(["plain", "gpu.render"])
    await chain.aio_run_no_wait({})
    (first,) = manual(mf).take()
    assert first.task.queue is None
    await manual(mf).deliver(first)
    (second,) = manual(mf).take()
    assert second.task.queue == "gpu", "a chain step goes to its own task's queue"
    await mf.aclose()


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "gpu,cpu", 3])
async def test_bad_queue_names_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidOptionsError, match="queue name"):
        Options(queue=bad)
    mf = Mageflow(backend=LocalBackend(), store=MemoryStore())
    with pytest.raises(InvalidOptionsError, match="queue name"):
        mf.task("t", queue=bad)


async def test_a_backend_without_routing_refuses_queues() -> None:
    mf = Mageflow(backend=ManualBackend(), store=MemoryStore())
    with pytest.raises(CapabilityNotSupportedError, match="cannot route"):
        mf.run_worker(queues=["gpu"])
    with pytest.raises(InvalidOptionsError, match="at least one queue"):
        mf.run_worker(queues=[])


async def test_status_names_the_queue_a_task_waits_for(redis_url: str) -> None:
    prefix = f"route-{uuid.uuid4().hex[:6]}"
    mf = Mageflow(backend=LocalBackend(), store=RedisStore(redis_url, prefix=prefix))

    @mf.task("gpu.render", queue="gpu")
    async def render(msg: dict[str, Any]) -> str:
        return "rendered"

    sig = await mf.sign("gpu.render")
    await sig.aio_run_no_wait({})  # no pool serves "gpu": it stays queued
    await asyncio.sleep(0.2)
    state = await sig.get_state()
    assert (state.status, state.queue) == (SignatureStatus.PENDING, "gpu")
    env = {
        **os.environ,
        "MAGEFLOW_REDIS_URL": redis_url,
        "MAGEFLOW_KEY_PREFIX": prefix,
        "COLUMNS": "200",
    }

    async def status(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mageflow", "status", sig.key, *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    text = await status()
    assert "serves queue 'gpu'" in text, text
    assert json.loads(await status("--json"))["queue"] == "gpu"
    await sig.cancel()
    await mf.aclose()


class FlakyStart(ManualBackend):
    """A backend whose broker is unreachable for its first two start attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0

    async def startup(self) -> None:
        self.starts += 1
        if self.starts <= 2:
            raise ConnectionError("the broker is not up yet")


async def test_a_publish_retries_a_backend_that_cannot_start_yet() -> None:
    """Issue 13 item 13: a client's publish rides out a transient connection error of the
    task manager (here at its first start) with backoff instead of raising it raw."""
    backend = FlakyStart()
    mf = Mageflow(backend=backend, store=MemoryStore())

    @mf.task("plain")
    async def plain(msg: dict[str, Any]) -> str:
        return "plain"

    sig = await mf.sign("plain")
    await sig.aio_run_no_wait({})
    assert backend.starts == 3
    assert [s.task.task_name for s in backend.take()] == ["plain"]
    await mf.aclose()
