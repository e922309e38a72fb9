"""Finishes of one workflow made while one is in flight go out in one engine call
(``mageflow.engine.coalesce``), each its own transition: on a real Redis, a swarm whose
items all finish at once settles right with fewer calls than items, every delivery's
stream entry acknowledged; the same finish twice in one batch is recorded once. The
coalescer's own rules (one bad item fails alone, an outage fails all) are driven with a
``send`` that fails on purpose: a store cannot be made to fail for one item only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.base import HEADER_KEY, RunContext, StreamEntry
from mageflow.engine.coalesce import Coalescer
from mageflow.errors import StoreUnavailableError
from tests.core.test_stream_ack import _app, _pending, _read, rdb  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _fcalls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_fcall", "cmdstat_evalsha")
    )


async def _deliver_first(app: Mageflow, msg: dict[str, Any], entry: StreamEntry) -> Any:
    """A first delivery, as the task manager makes it: its user code runs at once and its
    start is taken by its finish (one engine call per delivery when alone)."""
    definition = app.backend.definitions[msg["task"]]  # type: ignore[attr-defined]
    ctx = RunContext(
        task_name=definition.name,
        run_id=msg["id"],
        attempt=1,
        is_final_attempt=definition.retries == 0,
        headers={HEADER_KEY: msg["key"]},
        entry=entry,
        first_delivery=True,
    )
    return await definition.handler(dict(msg["payload"]), ctx)


async def test_items_finishing_together_share_calls_and_settle_right(
    redis_url: str,
    rdb: aioredis.Redis,  # noqa: F811
) -> None:
    app = _app(redis_url, shared=True)
    try:
        n = 40
        swarm = await app.swarm_of(
            "ack.step",
            [{"x": i} for i in range(n)],
            config=SwarmConfig(max_concurrency=n),
            is_swarm_closed=True,
        )
        await swarm.aio_run_no_wait({})
        read = await _read(rdb, app)
        assert len(read) == n
        before = await _fcalls(rdb)
        results = await asyncio.gather(*(_deliver_first(app, m, e) for e, m in read))
        calls = await _fcalls(rdb) - before
        assert sorted(results) == list(range(1, n + 1))
        assert calls < n / 2, f"{calls} engine calls for {n} finishes made together"
        assert all(entry.acknowledged for entry, _ in read)
        assert await _pending(rdb, read[0][0]) == 0
        assert await rdb.xlen(read[0][0].stream) == 0
        assert sorted(await swarm.wait(timeout=5)) == list(range(1, n + 1))
    finally:
        await app.aclose()


async def test_the_same_finish_twice_in_one_batch_is_recorded_once(
    redis_url: str,
    rdb: aioredis.Redis,  # noqa: F811
) -> None:
    app = _app(redis_url, shared=True)
    try:
        sigs = [await app.sign("ack.step") for _ in range(3)]
        for sig in sigs:
            await sig.aio_run_no_wait({})
        read = await _read(rdb, app)
        for _, msg in read:
            assert (await app.engine.start(msg["key"], msg["id"], "ack.step")).action == "run"
        # the first call goes out alone; the next five wait for it and go out together
        keys = [sigs[0].key, sigs[1].key, sigs[1].key, sigs[2].key, sigs[2].key, sigs[1].key]
        done = await asyncio.gather(*(app.engine.finish(k, True, "7") for k in keys))
        assert [t.duplicate for t in done] == [False, False, True, False, True, True]
        assert [await s.wait(timeout=5) for s in sigs] == [7, 7, 7]
    finally:
        await app.aclose()


async def test_one_bad_item_fails_alone_and_an_outage_fails_the_batch() -> None:
    sent: list[list[str]] = []
    outage = False

    async def send(key: str, items: Sequence[str]) -> list[str]:
        sent.append(list(items))
        await asyncio.sleep(0.01)
        if outage:
            raise StoreUnavailableError("down")
        if "bad" in items:
            raise ValueError("a bad item")
        return [f"{key}:{i}" for i in items]

    batches = Coalescer(send, shared=(StoreUnavailableError,))
    got = await asyncio.gather(
        *(batches("wf", i) for i in ("a", "b", "bad", "c")), return_exceptions=True
    )
    assert got[:2] == ["wf:a", "wf:b"] and got[3] == "wf:c"
    assert isinstance(got[2], ValueError)
    assert sent == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]

    sent.clear()
    outage = True
    got = await asyncio.gather(*(batches("wf", i) for i in "xyz"), return_exceptions=True)
    assert all(isinstance(g, StoreUnavailableError) for g in got)
    assert sent == [["x"], ["y", "z"]]  # not split: every item meets the same outage

    outage = False
    sent.clear()
    got = await asyncio.gather(batches("w1", "p"), batches("w2", "q"), batches("w1", "r"))
    assert got == ["w1:p", "w2:q", "w1:r"]
    assert sent == [["p"], ["q"], ["r"]]  # one key's calls wait only for that key's


class _Gated:
    """A ``send`` whose calls each wait for the test to let them return."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()
        self.open = False

    async def __call__(self, key: str, items: Sequence[str]) -> list[str]:
        self.sent.append(list(items))
        self.arrived.set()
        gate = asyncio.Event()
        self.gates.append(gate)
        if not self.open:
            await gate.wait()
        return [f"{key}:{i}" for i in items]

    async def until_sent(self, n: int) -> None:
        while len(self.sent) < n:
            self.arrived.clear()
            await self.arrived.wait()


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_batch_of_calls_that_came_during_a_call_lingers_for_more() -> None:
    send = _Gated()
    batches = Coalescer(send, most=3, linger=60.0)
    a = asyncio.create_task(batches("wf", "a"))
    await send.until_sent(1)  # a lone call goes out at once, linger or not
    b = asyncio.create_task(batches("wf", "b"))
    await _turns()
    send.gates[0].set()
    assert await asyncio.wait_for(a, 5) == "wf:a"
    await _turns()
    assert send.sent == [["a"]]  # b came while a was in flight: it waits for more
    c = asyncio.create_task(batches("wf", "c"))
    d = asyncio.create_task(batches("wf", "d"))
    await asyncio.wait_for(send.until_sent(2), 5)  # full (most=3): out before the linger
    assert send.sent == [["a"], ["b", "c", "d"]]
    send.gates[1].set()
    assert await asyncio.wait_for(asyncio.gather(b, c, d), 5) == ["wf:b", "wf:c", "wf:d"]


async def test_a_lingering_batch_goes_once_calls_stop_coming() -> None:
    send = _Gated()
    batches = Coalescer(send, linger=0.05)
    a = asyncio.create_task(batches("wf", "a"))
    await send.until_sent(1)
    b = asyncio.create_task(batches("wf", "b"))
    await _turns()
    send.gates[0].set()
    await asyncio.wait_for(send.until_sent(2), 5)
    assert send.sent == [["a"], ["b"]]
    send.gates[1].set()
    assert await asyncio.wait_for(asyncio.gather(a, b), 5) == ["wf:a", "wf:b"]


async def test_without_linger_a_batch_goes_as_soon_as_the_call_before_returned() -> None:
    send = _Gated()
    batches = Coalescer(send)
    a = asyncio.create_task(batches("wf", "a"))
    await send.until_sent(1)
    b = asyncio.create_task(batches("wf", "b"))
    await _turns()
    send.gates[0].set()
    await _turns()
    assert send.sent == [["a"], ["b"]]
    c = asyncio.create_task(batches("wf", "c"))  # came while b was in flight
    await _turns()
    send.gates[1].set()
    await asyncio.wait_for(send.until_sent(3), 5)
    assert send.sent == [["a"], ["b"], ["c"]]
    send.gates[2].set()
    assert await asyncio.wait_for(asyncio.gather(a, b, c), 5) == ["wf:a", "wf:b", "wf:c"]


async def test_a_lingering_batch_goes_after_the_linger_while_calls_keep_coming() -> None:
    """Calls every 10 ms, well within the 200 ms gap that keeps a batch waiting: the
    batch still goes once its oldest call waited the linger (1 s), long before they stop."""
    send = _Gated()
    batches = Coalescer(send, most=1000, linger=1.0)
    calls = [asyncio.create_task(batches("wf", "a"))]
    await send.until_sent(1)
    calls.append(asyncio.create_task(batches("wf", "b")))
    await _turns()
    send.gates[0].set()
    for i in range(500):  # 5 s of calls, if the batch waited for them to stop
        if len(send.sent) > 1:
            break
        await asyncio.sleep(0.01)
        calls.append(asyncio.create_task(batches("wf", f"c{i}")))
    assert len(send.sent) == 2, "the batch waited for calls to stop coming"
    assert send.sent[1][0] == "b" and len(send.sent[1]) > 2
    send.open = True
    for gate in send.gates:
        gate.set()
    got = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert got == [f"wf:{c}" for c in ["a", "b", *(f"c{i}" for i in range(len(calls) - 2))]]
