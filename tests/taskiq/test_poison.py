"""Stream entries that cannot be a message are dead-lettered, not crash-looped over.

An entry without a ``data`` field used to raise ``KeyError`` inside ``listen()``: the
worker died, the entry stayed pending, and the next worker to reclaim it died too. Now
each such entry (no ``data``, bytes that are not JSON, JSON that is not a taskiq
message) is copied to ``<queue>:dead`` with the reason, acknowledged and deleted, and the
worker keeps serving: on a fresh read and on a reclaim of an entry a dead consumer held.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import MakeAppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

GROUP = "taskiq"  # the stream broker's consumer group
POISON: list[dict[str, bytes]] = [
    {b"junk": b"no data field"},
    {b"data": b"\xff not json"},
    {b"data": b'{"valid": "json", "but": "no task"}'},
]


async def test_poison_entries_are_dead_lettered_and_the_worker_keeps_serving(
    redis_url: str, make_app_workers: MakeAppWorkers
) -> None:
    pool = make_app_workers(idle_timeout=1.0)
    rdb = aioredis.Redis.from_url(redis_url)
    probe = RedisProbe(redis_url)
    app = pool.client_app()
    contract_tasks.register(app)
    ns = uuid.uuid4().hex[:12]
    dead = f"{pool.queue}:dead"
    try:
        # One poison entry held by a consumer that died before acknowledging it: a live
        # worker reclaims it once idle (the crash loop of the issue).
        await rdb.xgroup_create(pool.queue, GROUP, id="$", mkstream=True)
        reclaimed_id = await rdb.xadd(pool.queue, {b"junk": b"held by a dead consumer"})
        await rdb.xreadgroup(GROUP, "dead-consumer", {pool.queue: ">"}, count=1)
        worker = pool.start("mageflow", concurrency=2)
        await pool.wait_ready(1, rdb)
        poison_ids = [await rdb.xadd(pool.queue, fields) for fields in POISON]

        sig = await app.sign("contract.collect", ns=ns, tag="served")
        await sig.aio_run_no_wait({})

        async def served_and_dead_lettered() -> bool:
            return bool(await probe.events(ns, "served")) and await rdb.xlen(dead) >= 4

        await probe.wait_until(served_and_dead_lettered, 30, f"dead letters\n{pool.logs()}")

        entries = await rdb.xrange(dead)
        by_id = {fields[b"dead_id"]: fields for _, fields in entries}
        assert set(by_id) == {reclaimed_id, *poison_ids}
        for msg_id, original in zip(poison_ids, POISON, strict=True):
            kept = by_id[msg_id]
            assert {k: kept[k] for k in original} == original, "the entry is kept as it was"
            assert kept[b"dead_group"] == GROUP.encode()
        assert b"no 'data' field" in by_id[poison_ids[0]][b"dead_reason"]
        assert b"cannot parse" in by_id[poison_ids[1]][b"dead_reason"]
        assert b"cannot parse" in by_id[poison_ids[2]][b"dead_reason"]
        assert b"no 'data' field" in by_id[reclaimed_id][b"dead_reason"]
        # acknowledged and deleted: nothing pending, nothing left to reclaim (the served
        # task's own message is acknowledged just after it records: wait for that too)

        async def all_acknowledged() -> bool:
            pending = (await rdb.xpending(pool.queue, GROUP))["pending"]
            return bool(pending == 0 and await rdb.xlen(pool.queue) == 0)

        await probe.wait_until(all_acknowledged, 30, f"acknowledgements\n{pool.logs()}")
        assert worker.proc.poll() is None, f"the worker exited:\n{pool.logs()}"
        assert len(await probe.events(ns, "served")) == 1
    finally:
        pool.stop_all()
        await app.aclose()
        await probe.close()
        await rdb.aclose()
