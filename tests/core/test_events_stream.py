"""``wf.events()``: the engine's streamed state changes, on both hosts of the script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.errors import SignatureNotFoundError, TaskFailedError
from mageflow.models.events import StreamedEvent
from tests.core.stores import store_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=4), store=store_for(request, "ev"))
    gate = asyncio.Event()

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        return int(msg.get("mageflow_results") or 0) + 1

    @mf.task("gated")
    async def gated(msg: dict[str, Any]) -> int:
        await gate.wait()
        return 1

    @mf.task("boom")
    async def boom(msg: dict[str, Any]) -> None:
        raise ValueError("boom")

    mf.gate = gate  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


async def collect(events: AsyncIterator[StreamedEvent]) -> list[StreamedEvent]:
    return [e async for e in events]


def seen(events: list[StreamedEvent]) -> list[tuple[str, str]]:
    return [(e.key.split(".", 1)[1], e.event) for e in events]


async def test_a_chain_streams_its_steps_in_order_and_ends(app: Mageflow) -> None:
    wf = await app.chain(["inc", "inc"], name="two")
    await wf.aio_run({})
    events = await asyncio.wait_for(collect(wf.events()), 10)
    steps = [e for e in events if e.kind == "task"]
    assert [e.event for e in steps] == ["started", "done", "started", "done"]
    assert seen(events)[0] == ("r", "started")
    assert seen(events)[-1] == ("r", "done")
    assert all(e.workflow == wf.key for e in events)
    assert {e.task_name for e in steps} == {"inc"}


async def test_a_live_subscriber_sees_events_as_they_happen(app: Mageflow) -> None:
    wf = await app.chain(["gated", "inc"])
    got: list[StreamedEvent] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for event in wf.events():
            got.append(event)
            if event.event == "started" and event.task_name == "gated":
                first.set()

    reader = asyncio.create_task(follow())
    await wf.aio_run_no_wait({})
    await asyncio.wait_for(first.wait(), 10)  # pushed while the step still runs
    assert not reader.done()
    app.gate.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(reader, 10)
    assert got[-1].event == "done" and got[-1].key == wf.key


async def test_a_swarm_failure_and_a_subtree_reader(app: Mageflow) -> None:
    sw = await app.swarm(
        tasks=["inc", "boom", "inc"],
        config=SwarmConfig(max_concurrency=1, stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    with pytest.raises(TaskFailedError):
        await sw.aio_run({})
    events = await collect(sw.events())
    failed = [e for e in events if e.event == "failed"]
    assert [e.task_name for e in failed if e.kind == "task"] == ["boom"]
    assert events[-1].key == sw.key and events[-1].status == "failed"
    only = await collect((await app.load(failed[0].key)).events())
    assert [e.event for e in only] == ["started", "failed"]


async def test_lifecycle_changes_are_streamed(app: Mageflow) -> None:
    wf = await app.chain(["inc", "inc"])
    await wf.suspend()
    await wf.aio_run_no_wait({})
    await wf.resume()
    await wf.wait(10)
    names = [e.event for e in await collect(wf.events()) if e.key == wf.key]
    assert names[:1] == ["suspended"] and "resumed" in names and names[-1] == "done"

    other = await app.chain(["gated"])
    await other.aio_run_no_wait({})
    await other.cancel()
    names = [e.event for e in await collect(other.events()) if e.key == other.key]
    assert names[-1] == "canceled"


async def test_unknown_key_raises(app: Mageflow) -> None:
    wf = await app.chain(["inc"])
    with pytest.raises(SignatureNotFoundError):
        await collect(type(wf)(app, wf.key.replace(".r", "x.r")).events())
