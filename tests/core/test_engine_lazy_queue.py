"""A swarm's lazy queue and its completion in parts, message by message through
ManualBackend on MemoryStore and a real Redis (the one engine script): a run or close of
a big swarm writes nothing per item, the queue's order is what it was (priority first,
first queued first within one), and a big swarm's result is assembled across calls,
byte for byte what one call would have built."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow, Options, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import NonRetryableError, SignatureInUseError
from mageflow.flows import reconcile
from mageflow.models.status import SignatureStatus
from mageflow.store import RedisStore
from mageflow.testing.manual import ManualBackend
from tests.core.stores import commands_run, deliver_all, drain, manual, same_commands

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHUNK = 1000
"""Items whose results one call assembles (COLLECT_CHUNK in the script)."""


FAILING: set[str] = set()
"""Tags whose task fails (as well as those whose message says ``fail``)."""


def _tasks(mf: Mageflow) -> list[str]:
    started: list[str] = []

    @mf.task("lz.tag")
    async def tag(msg: dict[str, Any]) -> Any:
        started.append(msg["tag"])
        if msg.get("fail") or msg["tag"] in FAILING:
            raise NonRetryableError(f"{msg['tag']} failed")
        return {"tag": msg["tag"], "n": len(started)}

    return started


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    manual_app.started = _tasks(manual_app)  # type: ignore[attr-defined]
    return manual_app


def started(mf: Mageflow) -> list[str]:
    return mf.started  # type: ignore[attr-defined,no-any-return]


async def one_by_one(mf: Mageflow) -> list[str]:
    """Deliver what is published one message at a time (a cap of 1 keeps one in flight):
    the tags in the order their items started."""
    before = len(started(mf))
    while sent := manual(mf).take():
        await deliver_all(mf, sent)
    return started(mf)[before:]


async def tagged(mf: Mageflow, tag: str, priority: int | None = None, **kw: Any) -> Any:
    options = Options(priority=priority) if priority is not None else None
    return await mf.sign("lz.tag", tag=tag, mageflow_options=options, **kw)


async def test_priorities_and_fifo_across_start_runs_adds_and_close(app: Mageflow) -> None:
    items = [
        await tagged(app, "a"),
        await tagged(app, "b", 5),
        await tagged(app, "c"),
        await tagged(app, "d", 9),
        await tagged(app, "e"),
    ]
    sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=False)
    await items[2].aio_run_no_wait({})  # c first queued: starts the swarm, which queues a..e
    with pytest.raises(SignatureInUseError):
        await items[0].aio_run_no_wait({})  # queued when the swarm started
    f = await sw.add_task(await tagged(app, "f"))
    g = await sw.add_task(await tagged(app, "g", 7))
    h = await sw.add_task(await tagged(app, "h"))
    await h.aio_run_no_wait({})  # added after the start: not queued until run or closed
    await sw.close_swarm()
    with pytest.raises(SignatureInUseError):
        await f.aio_run_no_wait({})  # queued by the close
    state = await sw.get_state()
    # d holds the one slot; g b c a e h f wait
    assert (state.counts["running"], state.counts["queued"]) == (1, 7), state.counts
    assert await one_by_one(app) == ["d", "g", "b", "c", "a", "e", "h", "f"]
    assert [r["tag"] for r in await sw.wait(timeout=5)] == list("abcdefgh")
    assert g.key != h.key


async def test_items_canceled_while_waiting_count_when_they_would_start(app: Mageflow) -> None:
    sw = await app.swarm_of(
        "lz.tag",
        [{"tag": f"t{i}"} for i in range(6)],
        config=SwarmConfig(max_concurrency=1),
        is_swarm_closed=True,
    )
    await sw.aio_run_no_wait({})
    wf, _ = split_key(sw.key)
    item_sids = await app.store.read_list(wf, F.aux(F.ITEMS, "r"))
    await (await app.load(f"{wf}.{item_sids[3]}")).cancel()  # waits past the cursor
    state = await sw.get_state()
    assert (state.counts["queued"], state.counts["failed"]) == (4, 1), state.counts
    assert await one_by_one(app) == ["t0", "t1", "t2", "t4", "t5"]
    results = await sw.wait(timeout=5)
    canceled = {"type": "Canceled", "message": "canceled by an operator"}
    assert results[3] == {"mageflow_error": canceled}


async def test_retry_queues_failed_and_stopped_items_in_item_order(app: Mageflow) -> None:
    items = [{"tag": f"r{i}"} for i in range(6)]
    FAILING.update({"r1", "r2"})
    sw = await app.swarm_of(
        "lz.tag",
        items,
        config=SwarmConfig(max_concurrency=1, stop_after_n_failures=2),
        is_swarm_closed=True,
    )
    await sw.aio_run_no_wait({})
    assert await one_by_one(app) == ["r0", "r1", "r2"]  # the budget stops the rest
    assert await sw.get_status() is SignatureStatus.FAILED
    state = await sw.get_state()
    assert state.counts["queued"] == 0, state.counts
    FAILING.clear()
    await sw.retry()
    # the failed items and the never-started ones, in item order (priority 0 all)
    assert await one_by_one(app) == ["r1", "r2", "r3", "r4", "r5"]
    assert [r["tag"] for r in await sw.wait(timeout=5)] == [f"r{i}" for i in range(6)]


async def _result_field(mf: Mageflow, key: str) -> str:
    wf, sid = split_key(key)
    (raw,) = await mf.store.read(wf, [F.of(sid, F.RESULT)])
    assert raw is not None
    return raw


async def test_a_big_swarm_result_is_assembled_in_parts_byte_for_byte(app: Mageflow) -> None:
    n = 2 * CHUNK + 345
    done = await app.sign("lz.tag", tag="done")
    sw = await app.swarm_of(
        "lz.tag",
        [{"tag": f"x{i}", "fail": i % 997 == 5} for i in range(n)],
        config=SwarmConfig(max_concurrency=50),
        is_swarm_closed=True,
        success_callbacks=[done],
    )
    await sw.aio_run_no_wait({})
    delivered = await drain(app)
    wf, _ = split_key(sw.key)
    item_sids = await app.store.read_list(wf, F.aux(F.ITEMS, "r"))
    parts = []
    for sid in item_sids:
        status, result, error = await F.read_node(app.store, wf, sid, [F.STATUS, F.RESULT, F.ERROR])
        parts.append(result if status == "done" else '{"mageflow_error":' + str(error) + "}")
    expected = "[" + ",".join(parts) + "]"
    assert await _result_field(app, sw.key) == expected
    (cb,) = [m for m in delivered if m.key == done.key]
    assert json.loads(expected) == json.loads(json.dumps(cb.task.payload["ret"]))
    assert await sw.get_status() is SignatureStatus.DONE
    assert not await app.store.read_list(wf, "result:r")


async def test_the_reconciler_finishes_a_result_its_caller_left_part_assembled(
    app: Mageflow,
) -> None:
    n = 2 * CHUNK + 1
    done = await app.sign("lz.tag", tag="done-r")
    sw = await app.swarm_of(
        "lz.tag",
        [{"tag": f"y{i}"} for i in range(n)],
        config=SwarmConfig(max_concurrency=n),
        is_swarm_closed=True,
        success_callbacks=[done],
    )
    await sw.aio_run_no_wait({})
    sent = manual(app).take()
    await deliver_all(app, sent[:-1])
    # the last item's finish, as a worker that dies right after its transition: the raw
    # engine call, without the client's continuation
    last = sent[-1]
    wf, sid = split_key(last.key)
    start = await app.engine._call(wf, "start", sid, last.run_id, "lz.tag")
    assert start[0] == "run"
    (reply,) = await app.engine._call(wf, "finish", sid, "1", '"last"', "{}", "", "", "", "", "")
    assert reply[4] == "1", "a result of this size is assembled in parts"
    assert await sw.get_status() is SignatureStatus.ACTIVE
    await reconcile.sweep_due(app)
    assert await sw.get_status() is SignatureStatus.DONE
    result = json.loads(await _result_field(app, sw.key))
    assert len(result) == n and result[-1] == "last"
    assert [m.key for m in manual(app).take()] == [done.key]  # its callback, once


@pytest_asyncio.fixture(loop_scope="session")
async def redis_app(redis_url: str) -> AsyncIterator[tuple[Mageflow, aioredis.Redis]]:
    store = RedisStore(redis_url, prefix=f"lz-{uuid.uuid4().hex[:6]}")
    mf = Mageflow(backend=ManualBackend(), store=store, resend_after=30.0)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]
    _tasks(mf)
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield mf, client
    await client.aclose()
    await mf.aclose()


@pytest.mark.parametrize("op", ["run", "close"])
async def test_a_swarm_run_or_close_costs_the_same_commands_at_any_size(
    redis_app: tuple[Mageflow, aioredis.Redis], op: str
) -> None:
    mf, client = redis_app
    # the engine's first call on a server loads its script (NOSCRIPT, SCRIPT LOAD, once):
    # made here, so that it is not counted against the first size when this test runs first
    await mf.engine.reconcile(uuid.uuid4().hex)
    figures = []
    for n in (1_000, 20_000):
        sw = await mf.swarm_of(
            "lz.tag",
            [{"tag": f"z{i}"} for i in range(n)],
            config=SwarmConfig(max_concurrency=10),
            is_swarm_closed=op == "run",
        )
        if op == "close":
            await sw.aio_run_no_wait({})  # an open swarm queues what it has when it starts
            await sw.add_tasks("lz.tag", [{"tag": f"late{i}"} for i in range(n)])
        await client.config_resetstat()
        if op == "run":
            await sw.aio_run_no_wait({})
        else:
            await sw.close_swarm()
        figures.append(await commands_run(client))
        manual(mf).take()
    assert same_commands(figures[0], figures[1]), (
        figures,
        "no command count grows with the swarm's size",
    )
