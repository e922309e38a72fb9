"""A worker killed with SIGKILL in the middle of a large swarm, on real taskiq workers.

Two ``mageflow worker`` processes (15 async slots each) serve a closed swarm of 500
``crash.item`` tasks under ``max_concurrency=20``. Once 150 items have completed, one
worker is killed with ``kill -9`` and a new one is started. The stream broker hands the
dead worker's unacknowledged messages to a live worker once they are idle for
``IDLE_TIMEOUT``; those items run again under the same run id and keep the swarm slots
they held.

Observed through the probe (``tests/taskiq/contract_app.py``): every run of every item
with its pid and time, every completion of its user code, and how many items held a
slot at once. Redelivery timing is printed (``-s``), not asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = pytest.mark.slow

ITEMS = 500
CAP = 20
SLOTS_PER_WORKER = 15  # < CAP: both workers always have items running
ITEM_SECONDS = 0.1
KILL_AFTER = 150  # completed items
IDLE_TIMEOUT = 2.0


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def crash_key(ns: str, *parts: str) -> str:
    return ":".join(("mageflow-probe", ns, *parts))  # as contract_app.crash_key


@pytest_asyncio.fixture
async def pool(make_app_workers: MakeAppWorkers) -> AsyncIterator[AppWorkers]:
    workers = make_app_workers(idle_timeout=IDLE_TIMEOUT)
    yield workers
    workers.stop_all()


@pytest_asyncio.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def client_app(pool: AppWorkers) -> Mageflow:
    app = pool.client_app()
    contract_tasks.register(app)

    @app.task("crash.item")
    async def crash_item(message: dict[str, Any]) -> int:  # pragma: no cover - runs on workers
        raise AssertionError("crash.item runs on the worker processes")

    return app


async def test_kill_9_mid_swarm_completes_once_and_reruns_only_unfinished(
    pool: AppWorkers, rdb: aioredis.Redis, redis_url: str
) -> None:
    victim = pool.start("mageflow", concurrency=SLOTS_PER_WORKER)
    pool.start("mageflow", concurrency=SLOTS_PER_WORKER)
    await pool.wait_ready(2, rdb)
    app = client_app(pool)
    probe = RedisProbe(redis_url)
    ns = uuid.uuid4().hex[:12]
    try:
        done_cb = await app.sign("contract.collect", ns=ns, tag="swarm-done")
        items = [await app.sign("crash.item", id=i) for i in range(ITEMS)]
        sw = await app.swarm(
            items,
            success_callbacks=[done_cb],
            config=SwarmConfig(max_concurrency=CAP),
            is_swarm_closed=True,
        )
        started = time.time()
        await sw.aio_run_no_wait({"ns": ns, "seconds": ITEM_SECONDS})

        async def enough_done() -> bool:
            return int(await rdb.llen(crash_key(ns, "done"))) >= KILL_AFTER

        await probe.wait_until(enough_done, 60, f"{KILL_AFTER} completed items")
        killed_at = time.time()
        victim.kill9()
        replacement = pool.start("mageflow", concurrency=SLOTS_PER_WORKER)

        # What the store had recorded as finished when the victim died (read just after
        # the kill; an item finished meanwhile by the survivor is just as finished).
        wf, _ = split_key(sw.key)
        sids = [split_key(item.key)[1] for item in items]
        assert {split_key(item.key)[0] for item in items} == {wf}
        statuses = [s for (s,) in await F.read_nodes(app.store, wf, sids, [F.STATUS])]
        finished_at_kill = {i for i, s in enumerate(statuses) if s == "done"}

        ready_pids = await pool.wait_ready(2, rdb)
        replacement_ready = time.time()
        results = await sw.wait(timeout=90)
        finished = time.time()

        # -- the swarm completed, its callback fired exactly once with every result -----
        assert results == list(range(ITEMS))

        async def callback_fired() -> bool:
            return len(await probe.events(ns, "swarm-done")) >= 1

        await probe.wait_until(callback_fired, 30, "the swarm's success callback")
        await asyncio.sleep(0.5)  # and not a second time
        (callback,) = await probe.events(ns, "swarm-done")
        assert callback["mageflow_results"] == list(range(ITEMS))

        # -- what ran where ------------------------------------------------------------
        runs: dict[int, list[tuple[int, float]]] = {}
        for raw in await rdb.lrange(crash_key(ns, "runs"), 0, -1):
            item, pid, at = text(raw).split(":")
            runs.setdefault(int(item), []).append((int(pid), float(at)))
        completions = Counter(int(x) for x in await rdb.lrange(crash_key(ns, "done"), 0, -1))
        in_flight = {
            i for i, rs in runs.items() if rs[0][0] == victim.proc.pid and i not in finished_at_kill
        }
        assert set(runs) == set(range(ITEMS)), "every item ran"
        assert set(completions) == set(range(ITEMS)), "every item completed"
        assert in_flight, "the kill should have hit items running on the victim"
        assert len(in_flight) <= SLOTS_PER_WORKER

        # -- nothing that had finished ran twice; only the victim's unfinished items did
        assert len(finished_at_kill) >= KILL_AFTER
        for i in finished_at_kill:
            assert len(runs[i]) == 1, f"item {i} had finished, yet ran again: {runs[i]}"
            assert completions[i] == 1, f"item {i} had finished, yet completed again"
        # an unfinished item of the victim completes only through the redelivery of its
        # message: it runs exactly once more, on a live worker (same run id, so not a dup)
        ran_again = {i for i, rs in runs.items() if len(rs) > 1}
        assert ran_again == in_flight, f"re-run without a crash: {ran_again - in_flight}"
        for i in in_flight:
            assert len(runs[i]) == 2, f"item {i}: {runs[i]}"
            assert runs[i][1][0] in ready_pids - {victim.proc.pid}
        assert {i for i, n in completions.items() if n > 1} <= in_flight
        assert victim.proc.pid not in ready_pids
        # The store counts one start per delivery it lets run: a redelivery runs under the
        # message's run id (with another run id it would be dropped as a duplicate). It
        # also restarts items the victim had started in the store but died before their
        # code recorded a run: those ran once, on a live worker.
        attempts = [a for (a,) in await F.read_nodes(app.store, wf, sids, [F.ATTEMPTS])]
        assert set(attempts) <= {"1", "2"}
        restarted = {i for i, a in enumerate(attempts) if a == "2"}
        if not app.engine.delivery:
            # (with stream delivery a first delivery records its start once it has run
            # FIRST_START_AFTER, or with its finish: a victim's item killed before that
            # was never counted, and its redelivery is its first recorded attempt)
            assert in_flight <= restarted
        assert restarted.isdisjoint(finished_at_kill)
        for i in restarted - in_flight:
            assert len(runs[i]) == 1 and runs[i][0][0] in ready_pids - {victim.proc.pid}

        # -- the cap held across workers, crash included ------------------------------
        observed = await probe.max_running(ns)
        assert observed <= CAP, f"observed {observed} items holding slots at once (cap {CAP})"
        assert observed > CAP // 2, f"only {observed} items ran at once: the cap was not used"

        rerun_times = sorted(runs[i][1][1] for i in in_flight)
        rerun_pids = sorted({runs[i][1][0] for i in in_flight})
        print(
            f"\nkill -9 after {killed_at - started:.2f}s with {len(in_flight)} items in flight "
            f"on the victim (+{len(restarted - in_flight)} started in the store only; "
            f"{len(finished_at_kill)} finished); idle_timeout={IDLE_TIMEOUT}s"
            f"\nreplacement worker ready {replacement_ready - killed_at:.2f}s after the kill"
            f"\nredelivered: first re-run {rerun_times[0] - killed_at:.2f}s, last "
            f"{rerun_times[-1] - killed_at:.2f}s after the kill ({len(rerun_times)} items, "
            f"on pids {rerun_pids}; the replacement is {replacement.proc.pid})"
            f"\nswarm of {ITEMS} done {finished - started:.2f}s after its start; "
            f"at most {observed} items held a slot at once"
        )
    finally:
        await app.aclose()
        await probe.close()
