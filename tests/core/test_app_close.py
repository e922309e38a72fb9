"""``Mageflow.aclose`` drains the backend and leaves nothing running on the loop (the CLI's
``asyncio.run`` hung on a reconciler that a drained task had started again)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from tests.core.stores import store_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=1), store=store_for(request, "c"))
    yield mf
    await mf.aclose()


def reconcilers() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "mageflow-reconciler"]


async def test_tasks_drained_during_close_do_not_restart_the_reconciler(app: Mageflow) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    @app.task("held")
    async def held(msg: dict[str, Any]) -> int:
        started.set()
        await gate.wait()
        ran.append(msg["n"])
        return int(msg["n"])

    first, second = await app.sign("held", n=1), await app.sign("held", n=2)
    await first.aio_run_no_wait({})
    await second.aio_run_no_wait({})  # queued behind the first: it starts during the drain
    await asyncio.wait_for(started.wait(), 10)
    assert reconcilers()  # the first task started this loop's reconciler
    closing = asyncio.ensure_future(app.aclose())
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(closing, 10)
    assert sorted(ran) == [1, 2]  # the drain let both finish
    assert [t for t in reconcilers() if not t.done()] == []


async def test_closing_before_the_sweep_began_leaves_no_coroutine_unawaited() -> None:
    """The reconciler's task cancelled before its first step (an app closed right after a
    delivery started it) must not leave its loop's coroutine behind, never awaited."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mf = Mageflow(backend=LocalBackend(workers=1, concurrency=1))
        mf.start_reconciler()
        await mf.aclose()
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]
