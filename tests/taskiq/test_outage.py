"""Redis outages in the middle of a swarm and a chain, on real taskiq workers.

Two ``mageflow worker`` processes (or one ``taskiq worker --workers 2``) serve a closed
swarm of ``ITEMS`` ``crash.item`` tasks (``max_concurrency=CAP``) and a chain of ``STEPS``
of them, the store and the broker on Redis servers of their own (or one server for both).
Once ``RESTART_AFTER`` swarm items completed, the store's Redis, the broker's Redis or
both are stopped (SIGTERM: a clean shutdown; SIGKILL: a crash) and started again on the
same port, with the persistence the scenario names: ``none`` loses everything (a broker
restarted so loses its queue and its consumer group), ``rdb`` saves on SIGTERM, ``aof``
(``appendonly yes``, fsync always) survives SIGKILL. A store that loses acknowledged
writes (SIGKILL without AOF) cannot be helped and is not tested. Some outages outlast
``IDLE_TIMEOUT``, one while the items its held messages stand for still run.

Every workflow must finish, each callback fire exactly once with every result, every
item run (the reconciler re-sends what the broker lost), no user code run twice (no
worker died), the cap hold, and both workers keep running. The probe (what ran, where,
how often) lives on the session's Redis, which is never restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
import stamina

from mageflow import Mageflow, SwarmConfig
from mageflow.errors import StoreUnavailableError
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe
from mageflow.testing.redis_server import RestartableRedis, restartable_redis

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = pytest.mark.slow

ITEMS = 200
CAP = 10
ITEM_SECONDS = 0.05
STEPS = 30
RESTART_AFTER = 60  # completed swarm items
DOWN = 0.3  # seconds the restarted Redis stays down
IDLE_TIMEOUT = 2.0
RESEND_AFTER = 1.0
DONE_TIMEOUT = 60.0
REPORT = "MAGEFLOW_OUTAGE_REPORT"
"""If set, a file each run appends its figures to (one JSON object a line)."""


@dataclass(frozen=True)
class Outage:
    name: str
    restart: tuple[str, ...]  # "store", "broker"
    sig: int
    persistence: str  # of what is restarted
    shared: bool = False  # the store and the broker on one Redis
    down: float = DOWN  # seconds it stays down
    kind: str = "mageflow"  # or "taskiq": `taskiq worker --workers 2` (one manager)
    items: int = ITEMS
    item_seconds: float = ITEM_SECONDS
    restart_after: int = RESTART_AFTER  # completed swarm items


SCENARIOS = [
    Outage("store-sigterm-rdb", ("store",), signal.SIGTERM, "rdb"),
    Outage("store-sigkill-aof", ("store",), signal.SIGKILL, "aof"),
    Outage("broker-sigterm-lost", ("broker",), signal.SIGTERM, "none"),
    Outage("broker-sigkill-lost", ("broker",), signal.SIGKILL, "none"),
    Outage("both-sigterm-rdb", ("store", "broker"), signal.SIGTERM, "rdb"),
    Outage("shared-sigkill-aof", ("store", "broker"), signal.SIGKILL, "aof", shared=True),
    # down longer than IDLE_TIMEOUT: held messages look idle when the broker is back
    Outage("store-sigterm-rdb-5s", ("store",), signal.SIGTERM, "rdb", down=5.0),
    Outage("broker-sigterm-rdb-5s", ("broker",), signal.SIGTERM, "rdb", down=5.0),
    # ... while the items those messages stand for still run: a worker must not claim
    # them before their holders renewed
    Outage(
        "broker-sigterm-rdb-3s-long-items",
        ("broker",),
        signal.SIGTERM,
        "rdb",
        down=3.0,
        items=30,
        item_seconds=5.0,
        restart_after=10,
    ),
    Outage(
        "shared-sigterm-taskiq-cli",
        ("store", "broker"),
        signal.SIGTERM,
        "rdb",
        shared=True,
        kind="taskiq",
    ),
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def crash_key(ns: str, *parts: str) -> str:
    return ":".join(("mageflow-probe", ns, *parts))  # as contract_app.crash_key


async def crash_item_elsewhere(message: dict[str, object]) -> int:  # pragma: no cover
    raise AssertionError("crash.item runs on the worker processes")


async def status_of(handle: Any) -> Any:
    """The status as the client reads it. Its first call after the store's restart may
    meet a connection the server closed (``StoreUnavailableError``); the next one
    reconnects. (Workers wait such errors out themselves; clients see them, typed.)"""
    async for attempt in stamina.retry_context(on=StoreUnavailableError, attempts=5):
        with attempt:
            status = await handle.get_status()
    return status


@contextmanager
def servers(outage: Outage) -> Iterator[tuple[RestartableRedis, RestartableRedis]]:
    with ExitStack() as stack:

        def one(role: str) -> RestartableRedis:
            kept = role in outage.restart
            return stack.enter_context(restartable_redis(outage.persistence if kept else "none"))

        store = one("store")
        broker = store if outage.shared else one("broker")
        yield store, broker


async def runs_of(rdb: aioredis.Redis, ns: str) -> dict[int, list[int]]:
    """Item -> the pids of every run of its user code."""
    runs: dict[int, list[int]] = {}
    for raw in await rdb.lrange(crash_key(ns, "runs"), 0, -1):
        item, pid, _at = text(raw).split(":")
        runs.setdefault(int(item), []).append(int(pid))
    return runs


@pytest.mark.parametrize("outage", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_workflows_ride_out_a_redis_restart(
    outage: Outage, make_app_workers: MakeAppWorkers, redis_url: str
) -> None:
    probe = RedisProbe(redis_url)
    rdb = aioredis.Redis.from_url(redis_url)
    with servers(outage) as (store, broker):
        pool: AppWorkers = make_app_workers(
            idle_timeout=IDLE_TIMEOUT,
            store_url=store.url,
            broker_url=broker.url,
            extra_env={"MAGEFLOW_RESEND_AFTER": str(RESEND_AFTER)},
        )
        if outage.kind == "taskiq":
            workers = [pool.start("taskiq", processes=2, concurrency=8)]
        else:
            workers = [pool.start("mageflow", concurrency=8) for _ in range(2)]
        app: Mageflow | None = None
        try:
            ready = await pool.wait_ready(2, rdb)
            app = pool.client_app()
            contract_tasks.register(app)
            app.task("crash.item")(crash_item_elsewhere)
            ns, ns_chain = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
            items = [await app.sign("crash.item", id=i) for i in range(outage.items)]
            sw = await app.swarm(
                items,
                success_callbacks=[await app.sign("contract.collect", ns=ns, tag="swarm-done")],
                config=SwarmConfig(max_concurrency=CAP),
                is_swarm_closed=True,
            )
            steps = [
                await app.sign("crash.item", id=i, ns=ns_chain, seconds=ITEM_SECONDS)
                for i in range(STEPS)
            ]
            ch = await app.chain(
                steps, success=await app.sign("contract.collect", ns=ns, tag="chain-done")
            )
            started = time.monotonic()
            await sw.aio_run_no_wait({"ns": ns, "seconds": outage.item_seconds})
            await ch.aio_run_no_wait({})

            async def enough_done() -> bool:
                return int(await rdb.llen(crash_key(ns, "done"))) >= outage.restart_after

            await probe.wait_until(enough_done, 60, f"{outage.restart_after} completed items")
            restarted_at = time.monotonic()
            targets = [store] if outage.shared else [
                {"store": store, "broker": broker}[role] for role in outage.restart
            ]  # fmt: skip
            restarts = (asyncio.to_thread(s.restart, outage.sig, outage.down) for s in targets)
            await asyncio.gather(*restarts)
            back_at = time.monotonic()

            async def both_done() -> bool:
                swarm_done = await probe.events(ns, "swarm-done")
                chain_done = await probe.events(ns, "chain-done")
                return bool(swarm_done) and bool(chain_done)

            await probe.wait_until(both_done, DONE_TIMEOUT, f"both callbacks\n{pool.logs()}")
            finished = time.monotonic()
            await asyncio.sleep(1.0)  # and not a second time

            swarm_cbs = await probe.events(ns, "swarm-done")
            chain_cbs = await probe.events(ns, "chain-done")
            runs, chain_runs = await runs_of(rdb, ns), await runs_of(rdb, ns_chain)
            twice = {i: r for i, r in runs.items() if len(r) > 1}
            chain_twice = {i: r for i, r in chain_runs.items() if len(r) > 1}
            completions = Counter(int(x) for x in await rdb.lrange(crash_key(ns, "done"), 0, -1))
            observed = await probe.max_running(ns)
            exits = [w.proc.returncode for w in workers if w.proc.poll() is not None]
            exits += [pid for pid in ready if not alive(pid)]  # taskiq's forked workers
            figures = {
                "scenario": outage.name,
                "lost": outage.items - len(runs) + STEPS - len(chain_runs),
                "ran_twice": len(twice) + len(chain_twice),
                "double_callbacks": max(len(swarm_cbs), 1) - 1 + max(len(chain_cbs), 1) - 1,
                "max_running": observed,
                "cap": CAP,
                "worker_exits": len(exits),
                "seconds_to_restart": round(restarted_at - started, 2),
                "seconds_down": round(back_at - restarted_at, 2),
                "seconds_to_finish_after": round(finished - back_at, 2),
            }
            print(f"\n{json.dumps(figures)}")
            if os.environ.get(REPORT):
                with Path(os.environ[REPORT]).open("a") as out:  # noqa: ASYNC230 (tiny)
                    out.write(json.dumps(figures) + "\n")

            # -- every workflow finished, each callback once, with every result ------------
            assert len(swarm_cbs) == 1, swarm_cbs
            assert swarm_cbs[0]["mageflow_results"] == list(range(outage.items))
            assert len(chain_cbs) == 1, chain_cbs
            assert chain_cbs[0]["mageflow_results"] == STEPS - 1
            assert await status_of(sw) == "done"
            assert await status_of(ch) == "done"
            # -- nothing lost, nothing run twice (no worker died), the cap held ------------
            assert set(runs) == set(range(outage.items)), "every item ran"
            assert set(completions) == set(range(outage.items)), "every item completed"
            assert set(chain_runs) == set(range(STEPS)), "every step ran"
            assert not twice and not chain_twice, f"user code ran twice: {twice} {chain_twice}"
            assert observed <= CAP, f"{observed} items held a slot at once (cap {CAP})"
            # -- the workers rode it out -----------------------------------------------------
            assert not exits, f"workers exited with {exits}:\n{pool.logs()}"
        finally:
            pool.stop_all()
            if app is not None:
                await app.aclose()
            await probe.close()
            await rdb.aclose()
