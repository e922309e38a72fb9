"""The root's final expiry (every key of a finished workflow takes the finished TTL) on
both hosts of the engine script: a swarm of plain tasks is marked ``flat`` and its items
are not walked (held lists are found through H:holders), so the root's final call costs
the same commands at any swarm size; every other shape is still walked to its keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend
from tests.core.stores import commands_run, deliver_all, drain, manual, same_commands, store_for
from tests.core.ttl import keys_of, ttl_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

FINISHED_TTL = 50
ACTIVE_TTL = 500
CHUNK = 1000
"""Items whose results one call assembles (COLLECT_CHUNK in the script)."""


def _tasks(mf: Mageflow) -> None:
    @mf.task("ft.echo")
    async def echo(msg: dict[str, Any]) -> Any:
        return msg.get("i")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    store = store_for(request, "ft", active_ttl=ACTIVE_TTL, finished_ttl=FINISHED_TTL)
    mf = Mageflow(backend=ManualBackend(), store=store, resend_after=30.0)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]
    _tasks(mf)
    yield mf
    await mf.aclose()


async def _flag(mf: Mageflow, key: str) -> str | None:
    wf, sid = split_key(key)
    (flat,) = await mf.store.read(wf, [F.of(sid, F.FLAT)])
    return flat


async def _all_finished_ttl(mf: Mageflow, wf: str) -> list[str]:
    """The workflow's keys (relative to its hash), each checked to have the finished TTL."""
    h = mf.store.hash_key(wf)
    keys = await keys_of(mf, wf)
    assert h in keys
    wrong = {k: t for k in keys if not 0 < (t := await ttl_of(mf, k)) <= FINISHED_TTL}
    assert not wrong, f"keys without the finished TTL: {wrong}"
    return sorted(k[len(h) :] for k in keys)


async def _forget_holders(mf: Mageflow, wf: str, swarm: str) -> None:
    """Make workflow ``wf`` look stored by an older version: no ``flat`` flag on
    ``swarm``, no H:holders set."""
    h = mf.store.hash_key(wf)
    if isinstance(mf.store, RedisStore):
        await mf.store.client.hdel(h, F.of(swarm, F.FLAT))
        await mf.store.client.delete(f"{h}:holders")
    else:
        assert isinstance(mf.store, MemoryStore)
        mf.store.keyspace.hdel(h, F.of(swarm, F.FLAT))
        mf.store.keyspace.delete(f"{h}:holders")


async def test_a_finished_flat_swarm_leaves_no_key_without_the_finished_ttl(
    app: Mageflow,
) -> None:
    n = 2 * CHUNK + 500  # its result assembled in parts (H:result, H:collect)
    sw = await app.swarm_of(
        "ft.echo",
        [{"i": i} for i in range(n)],
        config=SwarmConfig(max_concurrency=100),
        is_swarm_closed=True,
    )
    assert await _flag(app, sw.key) == "1"
    await sw.aio_run_no_wait({})
    await drain(app)
    assert await sw.get_status() is SignatureStatus.DONE
    wf, _ = split_key(sw.key)
    keys = await _all_finished_ttl(app, wf)
    assert ":items:r" in keys, keys


async def test_signed_plain_tasks_make_a_flat_swarm_and_callbacks_do_not(app: Mageflow) -> None:
    plain = await app.swarm([await app.sign("ft.echo"), "ft.echo"], is_swarm_closed=True)
    assert await _flag(app, plain.key) == "1"
    with_cb = await app.sign("ft.echo", success_callbacks=["ft.echo"])
    mixed = await app.swarm(["ft.echo", with_cb], is_swarm_closed=True)
    assert await _flag(app, mixed.key) is None
    nested = await app.swarm(["ft.echo", await app.chain(["ft.echo"])], is_swarm_closed=True)
    assert await _flag(app, nested.key) is None


@pytest.mark.parametrize("older", [False, True], ids=["holders", "older-version"])
async def test_a_held_item_of_a_flat_swarm_takes_the_finished_ttl(
    app: Mageflow, older: bool
) -> None:
    """An item suspended before it got a slot holds its start (a held list at the item);
    the root is canceled meanwhile. Stored by an older version (no flag, no H:holders),
    the items are walked to it."""
    sw = await app.swarm_of(
        "ft.echo",
        [{"i": i} for i in range(5)],
        config=SwarmConfig(max_concurrency=1),
        is_swarm_closed=True,
    )
    wf, _ = split_key(sw.key)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, "r"))
    await (await app.load(f"{wf}.{items[2]}")).suspend()
    if older:
        await _forget_holders(app, wf, "r")
    await sw.aio_run_no_wait({})
    await drain(app)
    held = f"{app.store.hash_key(wf)}:held:{items[2]}"
    assert 0 < await ttl_of(app, held) <= ACTIVE_TTL, "something is held at the item"
    if older:
        await _forget_holders(app, wf, "r")
    await sw.cancel()
    keys = await _all_finished_ttl(app, wf)
    assert f":held:{items[2]}" in keys, keys
    assert (":holders" in keys) is not older, keys


async def test_nested_chains_and_callbacks_of_a_swarm_take_the_finished_ttl(
    app: Mageflow,
) -> None:
    inner = await app.chain(["ft.echo", "ft.echo"])
    with_cb = await app.sign("ft.echo", success_callbacks=[await app.chain(["ft.echo"])])
    unstarted = await app.chain(["ft.echo"])  # an item never started: canceled first
    sw = await app.swarm(
        ["ft.echo", inner, with_cb, unstarted],
        config=SwarmConfig(max_concurrency=3),
        is_swarm_closed=True,
    )
    assert await _flag(app, sw.key) is None
    wf, _ = split_key(sw.key)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, "r"))
    await (await app.load(f"{wf}.{items[3]}")).cancel()
    await sw.aio_run_no_wait({})
    await drain(app)
    assert await sw.get_status() is SignatureStatus.DONE
    keys = await _all_finished_ttl(app, wf)
    for sid in (items[1], items[3], f"{items[2]}.s0"):
        assert f":steps:{sid}" in keys, (sid, keys)


async def test_adding_an_item_that_is_not_a_plain_task_ends_the_flat_mark(
    app: Mageflow,
) -> None:
    sw = await app.swarm_of("ft.echo", [{"i": i} for i in range(3)])
    await sw.add_tasks("ft.echo", [{"i": 3}, {"i": 4}])
    await sw.add_task("ft.echo", i=5)
    assert await _flag(app, sw.key) == "1", "plain tasks keep it"
    chain = await sw.add_task(await app.chain(["ft.echo", "ft.echo"]))
    assert await _flag(app, sw.key) is None
    await sw.add_task("ft.echo")
    assert await _flag(app, sw.key) is None, "once ended, it stays ended"
    await sw.close_swarm()
    await sw.aio_run_no_wait({})
    await drain(app)
    assert await sw.get_status() is SignatureStatus.DONE
    wf, chain_sid = split_key(chain.key)
    keys = await _all_finished_ttl(app, wf)
    assert f":steps:{chain_sid}" in keys, keys


async def test_adding_an_item_with_callbacks_ends_the_flat_mark(app: Mageflow) -> None:
    sw = await app.swarm_of("ft.echo", [{"i": 0}])
    cb = await app.chain(["ft.echo"])
    await sw.add_task(await app.sign("ft.echo", error_callbacks=[cb]))
    assert await _flag(app, sw.key) is None


# -- the cost of the root's final call (real Redis: INFO commandstats) ----------------------


@pytest_asyncio.fixture(loop_scope="session")
async def redis_app(redis_url: str) -> AsyncIterator[tuple[Mageflow, aioredis.Redis]]:
    store = RedisStore(
        redis_url,
        prefix=f"ftc-{uuid.uuid4().hex[:6]}",
        active_ttl=ACTIVE_TTL,
        finished_ttl=FINISHED_TTL,
    )
    mf = Mageflow(backend=ManualBackend(), store=store, resend_after=30.0)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]
    _tasks(mf)
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield mf, client
    await client.aclose()
    await mf.aclose()


async def test_the_final_call_of_a_flat_swarm_costs_the_same_commands_at_any_size(
    redis_app: tuple[Mageflow, aioredis.Redis],
) -> None:
    """The call in which the root settles: the last part of the result (COLLECT_CHUNK
    items at both sizes) and the root's final expiry. Both sizes are assembled in parts,
    so the final call is a 'collect' at both (at 1,000 items it is the last 'finish')."""
    mf, client = redis_app
    figures = []
    for n in (2 * CHUNK, 20 * CHUNK):
        sw = await mf.swarm_of(
            "ft.echo",
            [{"i": i} for i in range(n)],
            config=SwarmConfig(max_concurrency=100),
            is_swarm_closed=True,
        )
        await sw.aio_run_no_wait({})
        last, *sent = manual(mf).take()  # kept back: its slot stays taken, the rest refill
        await deliver_all(mf, sent)
        await drain(mf)
        wf, sid = split_key(last.key)
        start = await mf.engine._call(wf, "start", sid, last.run_id, "ft.echo")
        assert start[0] == "run"
        (reply,) = await mf.engine._call(wf, "finish", sid, "1", '"last"', "{}", "", "", "", "", "")
        assert reply[0] == "ok", reply
        calls = 0
        while reply[4:] == ["1"]:  # part-assembled: go on, as the caller would
            await client.config_resetstat()
            reply = await mf.engine._call(wf, "collect")
            calls += 1
        final = await commands_run(client)
        assert calls == n // CHUNK - 1
        assert await sw.get_status() is SignatureStatus.DONE
        figures.append(final)
        keys = await _all_finished_ttl(mf, wf)
        assert ":items:r" in keys and ":holders" not in keys, keys
    assert same_commands(figures[0], figures[1]), (
        figures,
        "the final call's commands do not grow with the swarm",
    )
