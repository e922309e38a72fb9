"""The store suite: the same transition semantics on MemoryStore and RedisStore, driven
message by message through ManualBackend so every interleaving is deterministic."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import (
    NotATaskError,
    PayloadNotSerializableError,
    SignatureInUseError,
    StoreUnavailableError,
    SwarmClosedError,
    TaskNotRegisteredError,
)
from mageflow.flows.handles import ADD_BATCH
from mageflow.models.signatures import NodeDef
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import CHUNK
from mageflow.testing.manual import ManualBackend

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    if request.param == "redis":
        store: Any = RedisStore(
            request.getfixturevalue("redis_url"),
            prefix=f"st-{uuid.uuid4().hex[:6]}",
            active_ttl=500,
            finished_ttl=50,
        )
    else:
        store = MemoryStore()
    mf = Mageflow(backend=ManualBackend(), store=store)
    runs: list[Any] = []

    @mf.task("step")
    async def step(msg: dict[str, Any]) -> Any:
        runs.append(msg)
        return msg.get("mageflow_results", 0) + 1

    mf.runs = runs  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


def manual(mf: Mageflow) -> ManualBackend:
    assert isinstance(mf.backend, ManualBackend)
    return mf.backend


async def test_duplicate_completion_advances_chain_once(app: Mageflow) -> None:
    wf = await app.chain(["step", "step"], success="step")
    await wf.aio_run_no_wait({})
    (first,) = manual(app).take()
    assert await manual(app).deliver(first) == 1
    (second,) = manual(app).take()
    # the same delivery again (another run id: a broker duplicate) does nothing at all
    assert await manual(app).deliver(first, run_id="other") is None
    assert manual(app).take() == []
    # the same run redelivered (its worker died after the transition) re-issues what
    # the first completion owed, without running user code again
    assert await manual(app).deliver(first) is None
    (reissued,) = manual(app).take()
    assert reissued.key == second.key
    assert len(app.runs) == 1  # type: ignore[attr-defined]
    await manual(app).deliver(second)
    (callback,) = manual(app).take()
    await manual(app).deliver(reissued)  # the re-issued copy of step 2 is a duplicate
    assert manual(app).take() == []
    await manual(app).deliver(callback)
    assert [r.get("mageflow_results") for r in app.runs] == [None, 1, 2]  # type: ignore[attr-defined]
    assert await wf.wait(timeout=1) == 2


async def test_redelivery_of_a_running_task_runs_it_again(app: Mageflow) -> None:
    sig = await app.sign("step")
    await sig.aio_run_no_wait({})
    (msg,) = manual(app).take()
    # a delivery that started but never finished (worker died mid-run)
    await app.engine.start(sig.key, msg.run_id)
    assert (await sig.get_state()).attempts == 1
    await manual(app).deliver(msg, run_id="intruder")  # a duplicate publish: dropped
    assert app.runs == []  # type: ignore[attr-defined]
    await manual(app).deliver(msg)  # the broker's redelivery of the same run: runs
    assert len(app.runs) == 1  # type: ignore[attr-defined]
    assert (await sig.get_state()).attempts == 2


async def test_swarm_fill_dispatches_one_per_finished_item(app: Mageflow) -> None:
    sw = await app.swarm(["step"] * 5, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    running = manual(app).take()
    assert len(running) == 2
    await manual(app).deliver(running[0])
    (third,) = manual(app).take()
    await manual(app).deliver(running[0], run_id="dup")  # duplicate: no extra slot freed
    assert manual(app).take() == []
    await manual(app).deliver(running[0])  # redelivery: re-issues the same item only
    assert [m.key for m in manual(app).take()] == [third.key]
    state = await sw.get_state()
    assert state.counts["running"] == 2
    assert state.counts["queued"] == 2


async def test_swarm_completes_once_in_item_order(app: Mageflow) -> None:
    sw = await app.swarm(["step"] * 3, is_swarm_closed=True)
    await sw.aio_run_no_wait({"mageflow_results": 10})
    msgs = manual(app).take()
    for m in reversed(msgs):
        await manual(app).deliver(m)
    for m in msgs:
        await manual(app).deliver(m)
    assert await sw.wait(timeout=1) == [11, 11, 11]
    state = await sw.get_state()
    assert state.counts["done"] == 3


async def test_add_to_closed_swarm_writes_nothing(app: Mageflow) -> None:
    sw = await app.swarm(["step"], is_swarm_closed=True)
    wf, _ = split_key(sw.key)
    before = await app.store.read_all(wf)
    with pytest.raises(SwarmClosedError):
        await sw.add_task("step")
    assert await app.store.read_all(wf) == before


async def test_unserialisable_message_writes_nothing(app: Mageflow) -> None:
    sig = await app.sign("step")
    wf, _ = split_key(sig.key)
    before = await app.store.read_all(wf)
    with pytest.raises(PayloadNotSerializableError, match="JSON"):
        await sig.aio_run_no_wait({"x": object()})
    assert await app.store.read_all(wf) == before
    assert manual(app).take() == []


async def test_values_are_json_or_plain_text(app: Mageflow) -> None:
    wf_sig = await app.chain(["step", "step"])
    await wf_sig.aio_run_no_wait({"a": [1, {"b": []}]})
    for m in manual(app).take():
        await manual(app).deliver(m)
    wf, _ = split_key(wf_sig.key)
    for field, value in (await app.store.read_all(wf)).items():
        assert not value.startswith("\x80"), f"{field} looks pickled"
        json_fields = (":kwargs", ":result", ":payload", ":input", ":owed")
        if field.endswith(json_fields) or ":" not in field:
            json.loads(value if not field.endswith(":input") else f"[{value}]")


async def test_signature_moved_into_chain_keeps_callbacks(app: Mageflow) -> None:
    cb = await app.sign("step", tag="cb")
    sig = await app.sign("step", success_callbacks=[cb])
    old_key = sig.key
    wf = await app.chain([sig])
    assert sig.key.startswith(wf.key.split(".")[0])
    assert cb.key.startswith(wf.key.split(".")[0])
    old_wf, _ = split_key(old_key)
    assert await app.store.read_all(old_wf) == {}
    await wf.aio_run_no_wait({})
    (m,) = manual(app).take()
    await manual(app).deliver(m)
    (callback,) = manual(app).take()
    assert callback.key == cb.key


@pytest.mark.parametrize("app", ["redis"], indirect=True)
async def test_redis_keys_share_hash_tag_and_expire(app: Mageflow, redis_url: str) -> None:
    store = app.store
    assert isinstance(store, RedisStore)
    sw = await app.swarm(["step"] * 3, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    wf, _ = split_key(sw.key)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = [k async for k in client.scan_iter(match=f"{store.prefix}:*{wf}*")]
    assert keys
    assert all(f"{{{wf}}}" in k for k in keys)
    ttls = [await client.ttl(k) for k in keys]
    assert all(50 < t <= 500 for t in ttls), ttls
    while msgs := manual(app).take():
        for m in msgs:
            await manual(app).deliver(m)
    assert 0 < await client.ttl(f"{store.prefix}:{{{wf}}}") <= 50
    await client.aclose()


async def test_unreachable_redis_names_url_without_password() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    with pytest.raises(StoreUnavailableError) as info:
        await store.ping()
    assert "s3cret" not in str(info.value)
    assert "redis://user:***@127.0.0.1:1/0" in str(info.value)
    await store.close()


async def test_refused_add_tasks_writes_nothing(app: Mageflow) -> None:
    closed = await app.swarm(["step"], is_swarm_closed=True)
    wf, _ = split_key(closed.key)
    before = await app.store.read_all(wf)
    with pytest.raises(SwarmClosedError):
        await closed.add_tasks("step", [{"i": i} for i in range(3)])
    assert await app.store.read_all(wf) == before
    # an id already stored, or twice in one batch, refuses the whole batch
    sw = await app.swarm()
    (existing,) = await sw.add_tasks("step", [{}])
    wf, sid = split_key(sw.key)
    before = await app.store.read_all(wf)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, sid))
    fresh, taken = f"{sid}.ifresh", split_key(existing.key)[1]
    for ids in ([fresh, taken], [fresh, fresh]):
        records = {i: NodeDef(kind="task", task="step", parent=sid).dump() for i in ids}
        with pytest.raises(SignatureInUseError):
            await app.engine.add_items(sw.key, ids, records)
        assert await app.store.read_all(wf) == before
        assert await app.store.read_list(wf, F.aux(F.ITEMS, sid)) == items


async def test_bulk_items_are_stored_like_signed_ones(app: Mageflow) -> None:
    def shape(records: dict[str, str], items: list[str]) -> dict[str, str]:
        """The records with item ids replaced by their index and build times blanked."""
        text = json.dumps(records)
        for i, sid in enumerate(items):
            text = text.replace(sid, f"item{i}")
        return {k: "T" if k.endswith(":created") else v for k, v in json.loads(text).items()}

    config = SwarmConfig(max_concurrency=2, stop_after_n_failures=1)
    options: dict[str, Any] = {"success_callbacks": "step", "config": config}
    bulk = await app.swarm_of("step", [{"i": 0}, {}], **options)
    signed = await app.swarm([await app.sign("step", i=0), await app.sign("step")], **options)
    shapes = []
    for sw in (bulk, signed):
        wf, sid = split_key(sw.key)
        items = await app.store.read_list(wf, F.aux(F.ITEMS, sid))
        shapes.append(shape(await app.store.read_all(wf), items))
    # a bulk item stores no build time of its own (one field less per item): it reports
    # its swarm's, as every item of one bulk build was built with it
    item_times = {k for k in shapes[1] if k.startswith("item") and k.endswith(":created")}
    assert len(item_times) == 2
    expected = {k: v for k, v in shapes[1].items() if k not in item_times}
    if app.engine.packed_state:
        # in a packed workflow the bulk items share one definition, their swarm's item
        # template, instead of one each
        defs = {expected.pop("item0"), expected.pop("item1")}
        assert len(defs) == 1
        expected[F.of(sid, F.TEMPLATE)] = defs.pop()
    assert shapes[0] == expected
    bulk_state = await bulk.get_state()
    item = await app.load(bulk_state.children[0])
    assert bulk_state.created_at is not None
    assert (await item.get_state()).created_at == bulk_state.created_at


async def test_large_bulk_batches_keep_item_order(app: Mageflow) -> None:
    n = CHUNK // 2  # four fields per item: more fields than one store command carries
    sw = await app.swarm_of("step", ({"i": i} for i in range(n)))
    added = await sw.add_tasks("step", ({"i": n + i} for i in range(2 * ADD_BATCH + 5)))
    wf, sid = split_key(sw.key)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, sid))
    assert [split_key(h.key)[1] for h in added] == items[n:]
    kwargs = await app.store.read(wf, [F.of(s, F.KWARGS) for s in items])
    assert [json.loads(k or "{}")["i"] for k in kwargs] == list(range(len(items)))


async def test_bad_bulk_input_writes_nothing(app: Mageflow) -> None:
    sig = await app.sign("step")
    sw = await app.swarm()
    wf, _ = split_key(sw.key)
    indexed = await app.store.list_workflows(10_000)
    before = await app.store.read_all(wf)
    bad: list[tuple[type[Exception], str, Any, list[Any]]] = [
        (NotATaskError, "signature", sig, [{}]),
        (TaskNotRegisteredError, "nope", "nope", [{}]),
        (PayloadNotSerializableError, "item 2 .* not int", "step", [{}, {}, 3]),
        (PayloadNotSerializableError, "item 1 .* JSON", "step", [{}, {"x": object()}]),
    ]
    for error, match, task, items in bad:
        with pytest.raises(error, match=match):
            await app.swarm_of(task, items)
        with pytest.raises(error, match=match):
            await sw.add_tasks(task, items)
    assert await app.store.list_workflows(10_000) == indexed
    assert await app.store.read_all(wf) == before


async def test_moving_signatures_in_bulk(app: Mageflow) -> None:
    sig = await app.sign("step")
    for twice in ([sig, sig], [sig, await app.load(sig.key)]):
        with pytest.raises(SignatureInUseError):
            await app.swarm(twice)
    signed = [sig, *[await app.sign("step", i=i) for i in range(3)]]
    old = [split_key(s.key)[0] for s in signed]
    sw = await app.swarm(signed)
    assert await app.store.read_many(old) == [{}] * 4
    wf, sid = split_key(sw.key)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, sid))
    assert [s.key for s in signed] == [f"{wf}.{i}" for i in items]


@pytest.mark.parametrize("app", ["redis"], indirect=True)
async def test_a_build_that_fails_part_way_leaves_nothing(app: Mageflow, redis_url: str) -> None:
    store = app.store
    assert isinstance(store, RedisStore)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    indexed = await store.list_workflows(10_000)
    keys = {k async for k in client.scan_iter(match=f"{store.prefix}:*")}
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", str(used + 2_000_000))  # Redis refuses writes past it
    try:
        with pytest.raises(ResponseError, match="maxmemory"):
            await app.swarm_of("step", ({"pad": "x" * 100, "i": i} for i in range(40_000)))
    finally:
        await client.config_set("maxmemory", "0")
    assert {k async for k in client.scan_iter(match=f"{store.prefix}:*")} == keys
    assert await store.list_workflows(10_000) == indexed
    await client.aclose()
