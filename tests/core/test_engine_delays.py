"""Delays the engine holds (a backend without native delays), priorities and workflow
context, on both hosts of the one engine script."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, Options
from mageflow.backend.local import LocalBackend
from mageflow.engine import split_key
from mageflow.errors import InvalidOptionsError
from mageflow.models.status import SignatureStatus
from tests.core.stores import store_for


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=4), store=store_for(request, "t"))
    runs: list[dict[str, Any]] = []
    ran: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)

    @mf.task("stamp")
    async def stamp(msg: dict[str, Any]) -> float:
        runs.append({**msg, "at": time.time()})
        ran[str(msg.get("tag"))].set()
        return time.time()

    mf.runs = runs  # type: ignore[attr-defined]
    mf.ran = ran  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


def runs(app: Mageflow) -> list[dict[str, Any]]:
    return app.runs  # type: ignore[attr-defined,no-any-return]


def ran(app: Mageflow, tag: str) -> asyncio.Event:
    return app.ran[tag]  # type: ignore[attr-defined,no-any-return]


async def delayed_count(app: Mageflow, key: str) -> int:
    wf, _ = split_key(key)
    return await app.store.count(wf, "delayed")


@pytest.mark.asyncio(loop_scope="session")
async def test_delayed_task_is_held_by_the_engine_and_released_when_due(app: Mageflow) -> None:
    assert not app.backend.capabilities.delayed_start
    sig = await app.sign("stamp", mageflow_options=Options(delay=0.5))
    before = time.time()
    await sig.aio_run_no_wait({})
    assert await delayed_count(app, sig.key) == 1
    state = await sig.get_state()
    assert state.status is SignatureStatus.PENDING
    assert state.not_before is not None and state.not_before.timestamp() >= before + 0.49
    assert await sig.wait(timeout=10) >= before + 0.49
    assert await delayed_count(app, sig.key) == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_cancel_drops_a_delayed_node(app: Mageflow) -> None:
    sig = await app.sign("stamp", tag="canceled", mageflow_options=Options(delay=0.3))
    await sig.aio_run_no_wait({})
    await sig.cancel()
    assert await delayed_count(app, sig.key) == 0
    await app.reconcile()
    assert await sig.get_status() is SignatureStatus.CANCELED
    assert not [r for r in runs(app) if r.get("tag") == "canceled"]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_delay_released_while_suspended_waits_for_resume(app: Mageflow) -> None:
    wf = await app.chain([await app.sign("stamp", mageflow_options=Options(delay=0.2), tag="s")])
    await wf.aio_run_no_wait({})
    await wf.suspend()
    deadline = time.time() + 5
    while await delayed_count(app, wf.key) and time.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the worker's reconciler releases it: store state
    assert await delayed_count(app, wf.key) == 0, "released into the hold"
    assert not [r for r in runs(app) if r.get("tag") == "s"]
    await wf.resume()
    await wf.wait(timeout=10)
    assert len([r for r in runs(app) if r.get("tag") == "s"]) == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_delayed_callback_runs_after_its_task(app: Mageflow) -> None:
    cb = await app.sign("stamp", tag="cb", mageflow_options=Options(delay=0.3))
    sig = await app.sign("stamp", tag="task", success_callbacks=[cb])
    ended = await sig.aio_run({}, timeout=10)
    await asyncio.wait_for(ran(app, "cb").wait(), 10)
    (got,) = [r for r in runs(app) if r.get("tag") == "cb"]
    assert got["at"] >= ended + 0.29


def test_options_are_checked_when_given() -> None:
    with pytest.raises(InvalidOptionsError, match="0 to 9"):
        Options(priority=10)
    with pytest.raises(InvalidOptionsError, match="not both"):
        Options(delay=1, start_at=datetime.now(timezone.utc))
    with pytest.raises(InvalidOptionsError, match="timezone-aware"):
        Options(start_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidOptionsError, match=">= 0"):
        Options(delay=-1)
