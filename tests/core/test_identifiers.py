"""``task_identifiers`` on MemoryStore and RedisStore: what the task sees, the state shows,
and how the identifier index finds signatures (moved, added, deleted, expired)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

import mageflow
from mageflow import Mageflow, TaskContext
from mageflow.engine import split_key
from mageflow.errors import (
    InvalidIdentifiersError,
    NotInTaskError,
    PayloadNotSerializableError,
    SwarmClosedError,
)
from mageflow.store import MemoryStore, RedisStore
from tests.core.test_store import app, manual

__all__ = ["app"]  # the store suite's fixture: both stores, a ManualBackend

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _ns() -> str:
    return uuid.uuid4().hex[:8]


async def test_the_task_reads_its_identifiers_and_attempt(app: Mageflow) -> None:
    seen: list[TaskContext] = []

    @app.task("me")
    async def me(msg: dict[str, Any]) -> dict[str, Any]:
        seen.append(mageflow.current_task())
        return msg

    sig = await app.sign("me", task_identifiers={"order_id": 12345, "tags": ["a"]}, x=1)
    await sig.aio_run_no_wait({"y": 2})
    (msg,) = manual(app).take()
    await app.engine.start(sig.key, msg.run_id)  # a first attempt whose worker died
    assert await manual(app).deliver(msg) == {"x": 1, "y": 2}  # identifiers not merged
    (ctx,) = seen
    assert ctx == TaskContext(
        key=sig.key,
        task_name="me",
        identifiers={"order_id": 12345, "tags": ["a"]},
        attempt=2,
        run_id=msg.run_id,
    )
    with pytest.raises(NotInTaskError, match="outside a running MageFlow task"):
        mageflow.current_task()


async def test_state_shows_identifiers_with_their_types(app: Mageflow) -> None:
    sig = await app.sign("step", task_identifiers={"n": 1, "s": "1"})
    assert (await sig.get_state()).identifiers == {"n": 1, "s": "1"}
    assert (await (await app.sign("step")).get_state()).identifiers == {}


async def test_find_matches_every_pair_newest_first(app: Mageflow) -> None:
    ns = _ns()
    keys = []
    for n in (1, "1", 2):
        keys.append((await app.sign("step", task_identifiers={"batch": ns, "n": n})).key)
        await asyncio.sleep(0.002)  # distinct creation milliseconds: a defined order
    a, b, c = keys
    assert await app.find_by_identifiers({"batch": ns}) == [c, b, a]
    assert await app.find_by_identifiers({"batch": ns}, limit=2) == [c, b]
    # values match by their text: 1 and "1" are the same identifier value
    assert await app.find_by_identifiers({"n": "1", "batch": ns}) == [b, a]
    assert await app.find_by_identifiers({"batch": ns, "n": 2}) == [c]
    assert await app.find_by_identifiers({"batch": ns, "n": 3}) == []
    assert await app.find_by_identifiers({"batch": _ns()}) == []


async def test_moved_signatures_are_found_under_their_new_keys(app: Mageflow) -> None:
    ns = _ns()
    cb = await app.sign("step", task_identifiers={"cb": ns})
    sig = await app.sign("step", task_identifiers={"order": ns}, success_callbacks=[cb])
    old = sig.key
    wf = await app.chain(["step", sig])
    assert sig.key != old and sig.key.startswith(split_key(wf.key)[0])
    # indexed at commit under the new key; the old entry stays until a lookup meets it
    assert set(await app.store.identified([f"order={ns}"])) == {old, sig.key}
    assert await app.find_by_identifiers({"order": ns}) == [sig.key]
    assert await app.store.identified([f"order={ns}"]) == [sig.key]  # removed lazily
    assert await app.find_by_identifiers({"cb": ns}) == [cb.key]


async def test_items_added_to_a_swarm_are_found(app: Mageflow) -> None:
    ns = _ns()
    sw = await app.swarm()
    item = await sw.add_task("step", task_identifiers={"item": ns})
    moved = await sw.add_task(await app.sign("step", task_identifiers={"item": ns, "m": 1}))
    assert await app.find_by_identifiers({"item": ns}) == [moved.key, item.key]
    assert (await item.get_state()).identifiers == {"item": ns}
    await sw.close_swarm()
    before = await app.store.list_workflows()
    with pytest.raises(SwarmClosedError):
        await sw.add_task("step", task_identifiers={"late": ns}, x=1)
    assert await app.store.list_workflows() == before  # nor a standalone signature
    assert await app.find_by_identifiers({"late": ns}) == []


async def test_deleted_workflows_leave_lookups_and_the_index(app: Mageflow) -> None:
    ns = _ns()
    gone = await app.sign("step", task_identifiers={"order": ns})
    kept = await app.sign("step", task_identifiers={"order": ns})
    await app.store.delete(split_key(gone.key)[0])
    assert await app.find_by_identifiers({"order": ns}) == [kept.key]
    assert await app.store.identified([f"order={ns}"]) == [kept.key]


async def test_bad_identifiers_are_refused_and_write_nothing(app: Mageflow) -> None:
    before = await app.store.list_workflows()
    bad: list[Any] = [{"a=b": 1}, {"": 1}, {1: "x"}, ["order_id"]]
    for identifiers in bad:
        with pytest.raises(InvalidIdentifiersError, match="task_identifiers"):
            await app.sign("step", task_identifiers=identifiers)
    with pytest.raises(PayloadNotSerializableError):
        await app.sign("step", task_identifiers={"x": object()})
    assert await app.store.list_workflows() == before
    with pytest.raises(InvalidIdentifiersError, match="at least one"):
        await app.find_by_identifiers({})
    with pytest.raises(InvalidIdentifiersError, match="mapping"):
        await app.find_by_identifiers("order_id=1")  # type: ignore[arg-type]


@pytest.mark.parametrize("app", ["memory"], indirect=True)
async def test_memory_index_expires_with_the_workflows(app: Mageflow) -> None:
    store = app.store
    assert isinstance(store, MemoryStore)
    ns = _ns()
    await app.sign("step", task_identifiers={"order": ns})
    clock = store.keyspace.clock
    store.keyspace.clock = lambda: clock() + store.active_ttl + 1
    assert await app.find_by_identifiers({"order": ns}) == []
    assert store.keyspace.exists(store.identifier_key(f"order={ns}")) == 0


@pytest.mark.parametrize("app", ["redis"], indirect=True)
async def test_redis_index_has_a_ttl_refreshed_on_write(app: Mageflow, redis_url: str) -> None:
    store = app.store
    assert isinstance(store, RedisStore)
    ns = _ns()
    await app.sign("step", task_identifiers={"order": ns})
    key = store.identifier_key(f"order={ns}")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.expire(key, 5)
    await app.sign("step", task_identifiers={"order": ns})
    assert 5 < await client.ttl(key) <= store.active_ttl
    await client.aclose()
