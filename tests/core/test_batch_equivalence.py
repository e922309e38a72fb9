"""A shared ``finish`` call changes the store exactly as its finishes one call each would
(docs/internals.md, "Finishes that end together share a call": each is the transition it
would be alone, in the same order); and the engine run as a Redis function, whose caches
live from call to call, exactly as the script run afresh by EVALSHA.

The same flat swarm (random size, cap and failure budget) is stored twice on one real
Redis (6.2, EVALSHA; 7, the engine as a function), under two prefixes, and driven by the
same seeded schedule with the engine's clock pinned: at every step a random handful of
the dispatched items finish, some of them failing and some twice, on one copy all at
once (the coalescer sends them in a shared call) and on the other one call each; now
and then the swarm is suspended (and later resumed) or an item canceled, on both. After
every step both copies hold the same keys with the same contents, the same TTL presence
and the same delivered messages, and the finishes replied the same. The events stream is
compared as its sequence of events, since a call writes all its changes as one entry.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import ROOT, SCRIPT, ops, split_key
from mageflow.engine import fields as F
from mageflow.engine.replies import Transition
from mageflow.errors import MageflowError
from mageflow.flows.build import WorkflowBuilder, has_priority
from mageflow.store import RedisStore
from mageflow.store.base import Script
from mageflow.store.redis import server_identity
from tests.core.test_finish_batches import _fcalls
from tests.core.test_first_delivery_worker import StreamManual

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAILED = '{"type":"Boom","message":"item failed"}'
LEAN_ON = "M.LEAN = true\n"
assert SCRIPT.source.count(LEAN_ON) == 1
GENERAL_ONLY = Script(SCRIPT.source.replace(LEAN_ON, "M.LEAN = false\n"))
"""The engine without its lean finish: every finish takes the general path."""
SEEDS = range(24)


class Copy:
    """One copy of the workflow: its app, key prefix and delivery stream."""

    def __init__(
        self, url: str, prefix: str, *, together: bool, script: Script | None = None
    ) -> None:
        self.together = together
        """Each step's finishes all at once (a shared call), else one call each."""
        self.prefix = prefix
        self.stream = f"{prefix}-deliveries"
        server = server_identity(aioredis.Redis.from_url(url).connection_pool.connection_kwargs)
        backend = StreamManual(server, self.stream)  # the engine appends the messages
        self.app = Mageflow(backend=backend, store=RedisStore(url, prefix=prefix))
        self.app.start_reconciler = lambda: None  # type: ignore[method-assign]
        if script is not None:
            self.app.engine.script = script

        @self.app.task("eq.item")
        async def item(msg: dict[str, Any]) -> int:
            return 1

        @self.app.task("eq.ranked", priority=5)
        async def ranked(msg: dict[str, Any]) -> int:
            return 1

        self.read_to = "0"

    async def finish(self, args: list[tuple[str, bool, str, str, int]]) -> list[Transition]:
        engine = self.app.engine
        if self.together:
            return list(
                await asyncio.gather(
                    *(engine.finish(k, ok, v, first_run=i, began_ms=b) for k, ok, v, i, b in args)
                )
            )
        return [await engine.finish(k, ok, v, first_run=i, began_ms=b) for k, ok, v, i, b in args]

    async def new_messages(self, r: aioredis.Redis) -> list[dict[str, Any]]:
        reply: Any = await r.xrange(self.stream, f"({self.read_to}" if self.read_to != "0" else "-")
        if reply:
            self.read_to = reply[-1][0]
        return [json.loads(fields["data"]) for _, fields in reply]

    async def waiting(self, r: aioredis.Redis, wf: str) -> list[str]:
        """The swarm's items not dispatched yet (their run record says only ``pending``)."""
        h = f"{self.prefix}:{{{wf}}}"
        items: list[str] = await r.lrange(f"{h}:items:{ROOT}", 0, -1)  # type: ignore[assignment]
        records = await r.hmget(h, [f"{i}:x" for i in items]) if items else []
        return [i for i, x in zip(items, records, strict=True) if x == "pending"]

    async def state(self, r: aioredis.Redis) -> dict[str, Any]:
        """Every key of this copy, by its name without the prefix: (type, contents, has a
        TTL); streams by their entries' contents."""
        out: dict[str, Any] = {}
        keys = [k async for k in r.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for key in [*keys, self.stream]:
            kind = await r.type(key)
            name = "deliveries" if key == self.stream else key[len(self.prefix) :]
            value: Any
            if kind == "hash":
                value = await r.hgetall(key)
            elif kind == "list":
                value = await r.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(await r.smembers(key))
            elif kind == "zset":
                value = await r.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                entries: Any = await r.xrange(key)
                if name.endswith(":events"):
                    value = [e for _, f in entries for e in json.loads(f["e"])]
                else:
                    value = [f for _, f in entries]
            elif kind == "string":
                value = await r.get(key)
            else:
                continue
            out[name] = (kind, value, await r.ttl(key) != -1)
        return out


def _reply(t: Transition) -> tuple[Any, ...]:
    return (t.publishes, list(t.events), t.wake_ms, t.duplicate, t.collecting)


async def _copy_keys(r: aioredis.Redis, src: str, dst: str) -> None:
    """Every key under prefix ``src`` again under ``dst`` (``r`` does not decode: DUMP)."""
    async for key in r.scan_iter(match=f"{src}:*", count=1000):
        dumped: Any = await r.dump(key)
        ttl = await r.pttl(key)
        await r.restore(dst.encode() + key[len(src) :], max(ttl, 0), dumped)


async def _operate(app: Mageflow, key: str, held: bool) -> tuple[Any, ...]:
    """Suspend the swarm (``held``: resume it), or cancel one item; what it replied, or
    the error it raised."""
    try:
        if key.endswith(f".{ROOT}"):
            if held:
                return ("resumed", _reply(await app.engine.resume(key)))
            return ("suspended", await app.engine.suspend(key, False, False))
        rids, transition = await app.engine.cancel(key)
        return ("canceled", rids, _reply(transition))
    except MageflowError as exc:
        return ("refused", type(exc).__name__)


async def _add_late(copies: tuple[Copy, Copy], swarm_key: str, task: str, n: int) -> list[str]:
    """Add ``n`` items of ``task`` to the open swarm, the same items (ids, records) to both
    copies, as ``add_tasks`` adds them; what each did (``added``, or the error raised)."""
    wf, sid = split_key(swarm_key)
    bulk = WorkflowBuilder(copies[0].app, wf).task_items(sid, task, [{"late": i} for i in range(n)])
    records = bulk.kwargs_records(0, n)
    lists = {F.aux(F.PRIO, sid): bulk.sids} if has_priority(bulk.shared[""]) else None
    outcomes = []
    for copy in copies:
        try:
            await copy.app.engine.add_items(swarm_key, bulk.sids, records, bulk.shared, lists)
            outcomes.append("added")
        except MageflowError as exc:  # the swarm failed meanwhile (its failure budget)
            outcomes.append(type(exc).__name__)
    return outcomes


async def _run_alone(app: Mageflow, key: str, own: str) -> tuple[Any, ...]:
    """Run a waiting item on its own (queued behind the items queued before it)."""
    try:
        return ("ran", _reply(await app.engine.run(key, own)))
    except MageflowError as exc:
        return ("refused", type(exc).__name__)


async def _without_functions(url: str) -> str:
    """The URL of a user of that server refused FCALL and FUNCTION: its store runs the
    engine by EVALSHA, the chunk defined afresh on every call."""
    admin = aioredis.Redis.from_url(url)
    user = f"eq{uuid.uuid4().hex[:6]}"
    await admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-fcall", "-function"
    )
    await admin.aclose()
    return f"redis://{user}:pw@{url.split('//', 1)[1]}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("server", "pair"),
    [
        ("redis_url", "shared"),
        ("redis7_url", "shared"),
        ("redis7_url", "evalsha"),
        ("redis_url", "lean"),
        ("redis7_url", "lean"),
    ],
)
async def test_two_ways_of_calling_the_engine_store_the_same(
    server: str,
    pair: str,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """``shared``: a shared call against one call per finish. ``evalsha``: the engine as a
    Redis function (loaded once, its caches kept between calls) against the script run by
    EVALSHA, both sending shared calls. ``lean``: the engine against itself without its
    lean finish (LEAN FINISH in the script), both sending shared calls."""
    redis_url: str = request.getfixturevalue(server)
    rng = random.Random(seed)
    clock = SimpleNamespace(ms=1_800_000_000_000)
    monkeypatch.setattr(ops, "time", SimpleNamespace(time=lambda: clock.ms / 1000))
    tag = uuid.uuid4().hex[:6]
    together = Copy(redis_url, f"eq{tag}a", together=True)
    if pair == "shared":
        alone = Copy(redis_url, f"eq{tag}b", together=False)
    elif pair == "lean":
        alone = Copy(redis_url, f"eq{tag}b", together=True, script=GENERAL_ONLY)
    else:
        alone = Copy(await _without_functions(redis_url), f"eq{tag}b", together=True)
    n, cap = rng.randint(2, 12), rng.randint(1, 5)
    budget = rng.choice([None, 1, 2, 3])
    is_open = rng.random() < 0.4  # items are added late (some with a priority), then closed
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    r_bin = aioredis.Redis.from_url(redis_url)
    try:
        swarm = await together.app.swarm_of(
            "eq.item",
            [{"i": i} for i in range(n)],
            config=SwarmConfig(max_concurrency=cap, stop_after_n_failures=budget),
            is_swarm_closed=not is_open,
        )
        wf = split_key(swarm.key)[0]
        await _copy_keys(r_bin, together.prefix, alone.prefix)
        for copy in (together, alone):
            await copy.app.engine.run(swarm.key, None)
        outstanding: dict[str, dict[str, Any]] = {}
        steps = 0
        calls = [0, 0]  # script calls of the shared finishes, of the one-by-one ones
        shared_steps = 0
        held = False
        while True:
            msgs = await together.new_messages(r)
            assert msgs == await alone.new_messages(r)
            outstanding.update((m["key"], m) for m in msgs)
            assert await together.state(r) == await alone.state(r), f"step {steps}"
            if not outstanding and not held and not is_open:
                break
            steps += 1
            clock.ms += rng.randint(0, 3)
            if is_open and not held and (not outstanding or rng.random() < 0.3):
                if outstanding and rng.random() < 0.7:
                    task = rng.choice(["eq.item", "eq.ranked"])
                    added = await _add_late((together, alone), swarm.key, task, rng.randint(1, 6))
                    assert added[0] == added[1]
                else:
                    closes = [
                        _reply(await c.app.engine.close_swarm(swarm.key)) for c in (together, alone)
                    ]
                    assert closes[0] == closes[1]
                    is_open = False
                continue
            waiting = await together.waiting(r, wf) if rng.random() < 0.1 else []
            if waiting and not held:  # a client runs a waiting item on its own
                item_key = f"{wf}.{rng.choice(waiting)}"
                own = rng.choice(["", '{"own":1}'])
                ran = [await _run_alone(c.app, item_key, own) for c in (together, alone)]
                assert ran[0] == ran[1]
                continue
            if not outstanding or rng.random() < 0.15:  # an operator acts, the same on both
                target = rng.choice([swarm.key, *sorted(outstanding)]) if not held else swarm.key
                outcomes = [await _operate(c.app, target, held) for c in (together, alone)]
                assert outcomes[0] == outcomes[1]
                held = held != (target == swarm.key)
                continue
            keys = rng.sample(sorted(outstanding), rng.randint(1, min(4, len(outstanding))))
            if rng.random() < 0.25:
                keys.append(rng.choice(keys))  # the same finish twice (a redelivery)
            finishes = [(k, rng.random() < 0.75) for k in keys]
            args = [
                (k, ok, "1" if ok else FAILED, outstanding[k]["id"], clock.ms - rng.randint(0, 3))
                for k, ok in finishes
            ]
            before = await _fcalls(r)
            shared = await together.finish(args)
            middle = await _fcalls(r)
            one_by_one = await alone.finish(args)
            calls[0] += middle - before
            shared_steps += len(args) >= 3
            calls[1] += await _fcalls(r) - middle
            assert [_reply(t) for t in shared] == [_reply(t) for t in one_by_one]
            for k in keys:
                outstanding.pop(k, None)
        if pair == "shared" and shared_steps:  # a step of 3 finishes or more shared calls
            assert calls[0] < calls[1]
        if pair == "evalsha":
            assert together.app.store.runs_functions is True  # type: ignore[attr-defined]
            assert alone.app.store.runs_functions is False  # type: ignore[attr-defined]
        record: Any = await r.hget(f"{together.prefix}:{{{swarm.key.split('.')[0]}}}", "r:x")
        assert record is not None and record.split("|")[0] in ("done", "failed", "canceled")
    finally:
        await r.aclose()
        await r_bin.aclose()
        for copy in (together, alone):
            await copy.app.aclose()


@pytest.mark.parametrize("case", ["priority", "run_alone"])
async def test_lean_finish_leaves_the_queue_to_the_general_path(
    case: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue states the lean finish must leave to the general path, built on purpose
    (the random schedules reach them rarely), one slot at a time: ``priority``, items
    with a priority, added late, wait ahead of the cursor's next item; ``run_alone``,
    items added late and run on their own wait in the queue while the cursor passes
    them, and once it passed them all. With and
    without the lean finish, the same items go out in the same order and the store holds
    the same after every finish."""
    clock = SimpleNamespace(ms=1_800_000_000_000)
    monkeypatch.setattr(ops, "time", SimpleNamespace(time=lambda: clock.ms / 1000))
    tag = uuid.uuid4().hex[:6]
    copies = (
        Copy(redis_url, f"lq{tag}a", together=True),
        Copy(redis_url, f"lq{tag}b", together=True, script=GENERAL_ONLY),
    )
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    r_bin = aioredis.Redis.from_url(redis_url)
    try:
        swarm = await copies[0].app.swarm_of(
            "eq.item",
            [{"i": i} for i in range(4 if case == "priority" else 2)],
            config=SwarmConfig(max_concurrency=1),
        )
        wf = split_key(swarm.key)[0]
        await _copy_keys(r_bin, copies[0].prefix, copies[1].prefix)
        for copy in copies:
            await copy.app.engine.run(swarm.key, None)
        task = "eq.ranked" if case == "priority" else "eq.item"
        assert await _add_late(copies, swarm.key, task, 2) == ["added", "added"]
        if case == "run_alone":  # the items added late (the others are queued already)
            for sid in (await copies[0].waiting(r, wf))[-2:]:
                ran = [await _run_alone(c.app, f"{wf}.{sid}", "") for c in copies]
                assert ran[0] == ran[1] and ran[0][0] == "ran"
        for copy in copies:
            await copy.app.engine.close_swarm(swarm.key)
        order = []
        while True:
            msgs = await copies[0].new_messages(r)
            assert msgs == await copies[1].new_messages(r)
            assert await copies[0].state(r) == await copies[1].state(r)
            if not msgs:
                break
            (m,) = msgs  # one slot: one item at a time
            order.append(m["payload"]["fold"]["kw"])
            clock.ms += 1
            args = [(m["key"], True, "1", m["id"], clock.ms - 1)]
            replies = [await c.finish(args) for c in copies]
            assert [_reply(t) for t in replies[0]] == [_reply(t) for t in replies[1]]
        if case == "priority":
            assert order == [{"i": 0}, {"late": 0}, {"late": 1}, {"i": 1}, {"i": 2}, {"i": 3}]
        else:
            assert order == [{"i": 0}, {"i": 1}, {"late": 0}, {"late": 1}]
        record: Any = await r.hget(f"{copies[0].prefix}:{{{wf}}}", "r:x")
        assert record.split("|")[0] == "done"
    finally:
        await r.aclose()
        await r_bin.aclose()
        for copy in copies:
            await copy.app.aclose()
