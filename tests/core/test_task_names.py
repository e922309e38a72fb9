"""Task names never collide with the engine's own markers (issue 13, item 7): a task named
``fill`` held by a suspend is released by resume like any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from tests.core.stores import store_for


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=4), store=store_for(request, "t"))
    mf.gate = asyncio.Event()  # type: ignore[attr-defined]
    mf.started = asyncio.Event()  # type: ignore[attr-defined]

    @mf.task("slow")
    async def slow(msg: dict[str, Any]) -> str:
        mf.started.set()  # type: ignore[attr-defined]
        await mf.gate.wait()  # type: ignore[attr-defined]
        return "slow"

    @mf.task("fill")
    async def fill(msg: dict[str, Any]) -> str:
        return f"fill after {msg['mageflow_results']}"

    yield mf
    await mf.aclose()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_task_named_fill_is_released_on_resume(app: Mageflow) -> None:
    wf = await app.chain(["slow", "fill"])
    await wf.aio_run_no_wait({})
    await asyncio.wait_for(app.started.wait(), 10)  # type: ignore[attr-defined]
    await wf.suspend()
    app.gate.set()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)  # slow finishes under the hold; fill must wait
    assert (await wf.get_state()).status.value == "suspended"
    await wf.resume()
    assert await wf.wait(timeout=10) == "fill after slow"
