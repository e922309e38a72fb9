"""The finish transition acknowledges the delivery's stream entry (``RunContext.entry``)
when the broker's streams are on the store's Redis: XACK + XDEL in the same call, in
every branch of the finish (recorded, duplicate, missing node), and only for a run that
ended (not for an attempt that will be retried, not without stream delivery).

The deliveries are real entries of a real stream, read by a consumer group."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow
from mageflow.backend.base import HEADER_KEY, RunContext, StreamEntry
from mageflow.store import RedisStore
from mageflow.store.redis import server_identity
from mageflow.testing.manual import ManualBackend
from tests.core.test_first_delivery_worker import StreamManual

pytestmark = pytest.mark.asyncio(loop_scope="session")

GROUP = "workers"


@pytest_asyncio.fixture(loop_scope="session")
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def _app(redis_url: str, *, shared: bool) -> Mageflow:
    store = RedisStore(redis_url, prefix=f"ack-{uuid.uuid4().hex[:6]}")
    stream = f"ack-stream-{uuid.uuid4().hex[:6]}"
    server = server_identity(aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs)
    backend = StreamManual(server if shared else "elsewhere", stream)
    mf = Mageflow(backend=backend, store=store)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]

    @mf.task("ack.step")
    async def step(msg: dict[str, Any]) -> int:
        return int(msg.get("mageflow_results", msg.get("x", 0))) + 1

    @mf.task("ack.boom", retries=1)
    async def boom(msg: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    return mf


async def _read(rdb: aioredis.Redis, app: Mageflow) -> list[tuple[StreamEntry, dict[str, Any]]]:
    """Every entry of the app's stream, read by a consumer of GROUP (pending until
    acknowledged), with its message."""
    backend = app.backend
    assert isinstance(backend, StreamManual)
    stream = backend.stream
    if await rdb.exists(stream) == 0 or not await rdb.xinfo_groups(stream):
        await rdb.xgroup_create(stream, GROUP, id="0", mkstream=True)
    read = await rdb.xreadgroup(GROUP, "c1", {stream: ">"}) or []
    return [
        (StreamEntry(stream, GROUP, entry_id), json.loads(fields["data"]))
        for _, entries in read
        for entry_id, fields in entries
    ]


async def _deliver(app: Mageflow, msg: dict[str, Any], entry: StreamEntry, attempt: int) -> Any:
    definition = app.backend.definitions[msg["task"]]  # type: ignore[attr-defined]
    ctx = RunContext(
        task_name=definition.name,
        run_id=msg["id"],
        attempt=attempt,
        is_final_attempt=attempt > definition.retries,
        headers={HEADER_KEY: msg["key"]},
        entry=entry,
    )
    return await definition.handler(dict(msg["payload"]), ctx)


async def _pending(rdb: aioredis.Redis, entry: StreamEntry) -> int:
    return int((await rdb.xpending(entry.stream, entry.group))["pending"])


async def test_a_finished_run_acknowledges_and_deletes_its_entry(
    redis_url: str, rdb: aioredis.Redis
) -> None:
    app = _app(redis_url, shared=True)
    try:
        assert app.engine.delivery
        wf = await app.chain(["ack.step", "ack.step"])
        await wf.aio_run_no_wait({"x": 1})
        for _ in range(2):
            ((entry, msg),) = await _read(rdb, app)
            await _deliver(app, msg, entry, attempt=1)
            assert entry.acknowledged
            assert await _pending(rdb, entry) == 0
            assert await rdb.xrange(entry.stream, entry.entry_id, entry.entry_id) == []
        assert await wf.wait(timeout=5) == 3
    finally:
        await app.aclose()


async def test_a_retried_attempt_leaves_its_entry_to_the_adapter_the_final_one_does_not(
    redis_url: str, rdb: aioredis.Redis
) -> None:
    app = _app(redis_url, shared=True)
    try:
        sig = await app.sign("ack.boom")
        await sig.aio_run_no_wait({})
        ((entry, msg),) = await _read(rdb, app)
        with pytest.raises(RuntimeError):
            await _deliver(app, msg, entry, attempt=1)
        assert not entry.acknowledged
        assert await _pending(rdb, entry) == 1  # the task manager acks once it retried
        retry = StreamEntry(entry.stream, GROUP, (await rdb.xadd(entry.stream, {"data": "{}"})))
        await rdb.xreadgroup(GROUP, "c1", {entry.stream: ">"})
        with pytest.raises(RuntimeError):
            await _deliver(app, msg, retry, attempt=2)  # final: the failure is recorded
        assert retry.acknowledged
        assert await rdb.xrange(entry.stream, retry.entry_id, retry.entry_id) == []
        assert await _pending(rdb, entry) == 1  # the first entry: still the adapter's
    finally:
        await app.aclose()


async def test_every_branch_of_the_finish_acknowledges(redis_url: str, rdb: aioredis.Redis) -> None:
    """Recorded, then a duplicate of the same finish, then a node that is not there."""
    app = _app(redis_url, shared=True)
    try:
        sig = await app.sign("ack.step")
        await sig.aio_run_no_wait({})
        ((entry, msg),) = await _read(rdb, app)
        assert (await app.engine.start(sig.key, msg["id"], "ack.step")).action == "run"
        for duplicate, key in ((False, sig.key), (True, sig.key), (True, sig.key + ".missing")):
            entry_id = await rdb.xadd(entry.stream, {"data": "{}"})
            await rdb.xreadgroup(GROUP, "c1", {entry.stream: ">"})
            done = await app.engine.finish(key, True, "1", ack=(entry.stream, GROUP, entry_id))
            assert done.duplicate is duplicate
            assert await rdb.xrange(entry.stream, entry_id, entry_id) == []
        # the original delivery's entry was never named: still pending
        assert await _pending(rdb, entry) == 1
    finally:
        await app.aclose()


async def test_without_stream_delivery_the_adapter_acknowledges(
    redis_url: str, rdb: aioredis.Redis
) -> None:
    """The broker's streams are not on the store's server (as the backend says): the
    finish must not touch the entry, even one the adapter named."""
    app = _app(redis_url, shared=False)
    try:
        assert not app.engine.delivery
        assert isinstance(app.backend, ManualBackend)
        sig = await app.sign("ack.step")
        await sig.aio_run_no_wait({"x": 1})
        (sent,) = app.backend.take()
        stream = app.backend.stream  # type: ignore[attr-defined]
        await rdb.xgroup_create(stream, GROUP, id="0", mkstream=True)
        entry_id = await rdb.xadd(stream, {"data": "{}"})
        await rdb.xreadgroup(GROUP, "c1", {stream: ">"})
        entry = StreamEntry(stream, GROUP, entry_id)
        msg = {"task": "ack.step", "id": sent.run_id, "key": sig.key, "payload": sent.task.payload}
        assert await _deliver(app, msg, entry, attempt=1) == 2
        assert not entry.acknowledged
        assert await _pending(rdb, entry) == 1
    finally:
        await app.aclose()
