"""One disruption in the middle of a swarm and a chain on real taskiq workers, observed.

Shared by the outage test (``test_outage.py``, which asserts on what it observed) and
``bench/outage_table.py`` (which tabulates it). Two ``mageflow worker`` processes (or one
``taskiq worker --workers 2``) serve a closed swarm of ``crash.item`` tasks
(``max_concurrency=CAP``) and a chain of ``STEPS`` of them, the store and the broker on
Redis servers of their own (or one server for both). Once ``restart_after`` swarm items
completed, the scenario's disruption happens: the store's Redis, the broker's Redis or both
are stopped (SIGTERM: a clean shutdown; SIGKILL: a crash) and started again on the same
port with the scenario's persistence (``none``, ``rdb``: saved on SIGTERM, ``aof``: fsync
always), or one worker is killed with SIGKILL. The probe (what ran, where, how often) lives
on a Redis that is never restarted.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import stamina

from mageflow import Mageflow, SwarmConfig
from mageflow.errors import MageflowError, StoreUnavailableError
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe
from mageflow.testing.redis_server import RestartableRedis, restartable_redis

if TYPE_CHECKING:
    from tests.taskiq.conftest import AppWorkers, Worker

ITEMS = 200
CAP = 10
ITEM_SECONDS = 0.05
STEPS = 30
RESTART_AFTER = 60  # completed swarm items
DOWN = 0.3  # seconds the restarted Redis stays down
IDLE_TIMEOUT = 2.0
RESEND_AFTER = 1.0
DONE_TIMEOUT = 60.0
WORKER_KILLED = "worker killed"
"""Why an item ran twice when its first run was on the worker the scenario killed."""


@dataclass(frozen=True)
class Outage:
    name: str
    restart: tuple[str, ...]  # "store", "broker"; () with kill_worker
    sig: int
    persistence: str  # of what is restarted
    shared: bool = False  # the store and the broker on one Redis
    down: float = DOWN  # seconds it stays down
    kind: str = "mageflow"  # or "taskiq": `taskiq worker --workers 2` (one manager)
    items: int = ITEMS
    item_seconds: float = ITEM_SECONDS
    restart_after: int = RESTART_AFTER  # completed swarm items
    cap: int = CAP
    steps: int = STEPS
    kill_worker: bool = False  # SIGKILL one of the two workers instead of a restart
    concurrency: int = 8  # of each worker


@dataclass
class Outcome:
    """What a scenario observed (``hung``: a workflow's callback did not come in time)."""

    outage: Outage
    hung: bool
    swarm_cbs: list[Any]
    chain_cbs: list[Any]
    runs: dict[int, list[int]]  # swarm item -> the pid of every run of its user code
    chain_runs: dict[int, list[int]]
    completions: Counter[int]
    max_running: int
    exits: list[int]  # exit codes / pids of workers the scenario did not kill
    killed: set[int] = field(default_factory=set)  # pids the scenario killed
    statuses: tuple[Any, Any] = (None, None)  # of the swarm and the chain
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def twice(self) -> dict[str, dict[int, list[int]]]:
        """The swarm items and chain steps whose user code ran more than once."""
        return {
            "swarm": {i: r for i, r in self.runs.items() if len(r) > 1},
            "chain": {i: r for i, r in self.chain_runs.items() if len(r) > 1},
        }

    def twice_reasons(self) -> Counter[str]:
        """Why each doubled run ran twice: its first run was on a killed worker, or not."""
        reasons: Counter[str] = Counter()
        for doubled in self.twice.values():
            for pids in doubled.values():
                reasons[WORKER_KILLED if pids[0] in self.killed else "unexplained"] += 1
        return reasons

    def figures(self) -> dict[str, Any]:
        o = self.outage
        return {
            "scenario": o.name,
            "runs": sum(map(len, self.runs.values())) + sum(map(len, self.chain_runs.values())),
            "lost": o.items - len(self.runs) + o.steps - len(self.chain_runs),
            "ran_twice": sum(map(len, self.twice.values())),
            "ran_twice_why": dict(self.twice_reasons()),
            "double_callbacks": max(len(self.swarm_cbs), 1) - 1 + max(len(self.chain_cbs), 1) - 1,
            "max_running": self.max_running,
            "cap": o.cap,
            "hung": self.hung,
            "worker_exits": len(self.exits),
            **self.seconds,
        }


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
    """The store's and the broker's Redis (one server if ``outage.shared``)."""
    with ExitStack() as stack:

        def one(role: str) -> RestartableRedis:
            kept = role in outage.restart
            return stack.enter_context(restartable_redis(outage.persistence if kept else "none"))

        store = one("store")
        broker = store if outage.shared else one("broker")
        yield store, broker


def pool_options(store: RestartableRedis, broker: RestartableRedis) -> dict[str, Any]:
    """The :class:`AppWorkers` options of a scenario on these servers."""
    return {
        "idle_timeout": IDLE_TIMEOUT,
        "store_url": store.url,
        "broker_url": broker.url,
        "extra_env": {"MAGEFLOW_RESEND_AFTER": str(RESEND_AFTER)},
    }


def start_workers(outage: Outage, pool: AppWorkers) -> list[Worker]:
    if outage.kind == "taskiq":
        return [pool.start("taskiq", processes=2, concurrency=outage.concurrency)]
    return [pool.start("mageflow", concurrency=outage.concurrency) for _ in range(2)]


async def runs_of(rdb: aioredis.Redis, ns: str) -> dict[int, list[int]]:
    """Item -> the pids of every run of its user code."""
    runs: dict[int, list[int]] = {}
    for raw in await rdb.lrange(crash_key(ns, "runs"), 0, -1):
        item, pid, _at = text(raw).split(":")
        runs.setdefault(int(item), []).append(int(pid))
    return runs


async def ride_out(
    outage: Outage,
    pool: AppWorkers,
    servers: tuple[RestartableRedis, RestartableRedis],
    probe_url: str,
    *,
    done_timeout: float = DONE_TIMEOUT,
) -> Outcome:
    """Run the swarm and the chain on ``pool``'s workers (started here), disrupt them as
    ``outage`` says, and observe the outcome. Stops the workers."""
    store, broker = servers
    probe = RedisProbe(probe_url)
    rdb = aioredis.Redis.from_url(probe_url)
    workers = start_workers(outage, pool)
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
            config=SwarmConfig(max_concurrency=outage.cap),
            is_swarm_closed=True,
        )
        steps = [
            await app.sign("crash.item", id=i, ns=ns_chain, seconds=ITEM_SECONDS)
            for i in range(outage.steps)
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
        killed: set[int] = set()
        if outage.kill_worker:
            victim = workers[0]
            killed.add(victim.proc.pid)
            victim.kill9()
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

        try:
            await probe.wait_until(both_done, done_timeout, "both callbacks")
        except AssertionError:
            hung = True
        else:
            hung = False
            await asyncio.sleep(1.0)  # and not a second time
        finished = time.monotonic()
        statuses: tuple[Any, Any] = (None, None)
        if not hung:
            try:
                statuses = (await status_of(sw), await status_of(ch))
            except MageflowError as exc:
                statuses = (exc, exc)
        exits = [w.proc.returncode for w in workers if w.proc.poll() is not None and not w.killed]
        exits += [pid for pid in ready if not alive(pid) and pid not in killed]  # taskiq's forks
        return Outcome(
            outage=outage,
            hung=hung,
            swarm_cbs=await probe.events(ns, "swarm-done"),
            chain_cbs=await probe.events(ns, "chain-done"),
            runs=await runs_of(rdb, ns),
            chain_runs=await runs_of(rdb, ns_chain),
            completions=Counter(int(x) for x in await rdb.lrange(crash_key(ns, "done"), 0, -1)),
            max_running=await probe.max_running(ns),
            exits=exits,
            killed=killed,
            statuses=statuses,
            seconds={
                "seconds_to_restart": round(restarted_at - started, 2),
                "seconds_down": round(back_at - restarted_at, 2),
                "seconds_to_finish_after": round(finished - back_at, 2),
            },
        )
    finally:
        pool.stop_all()
        if app is not None:
            await app.aclose()
        await probe.close()
        await rdb.aclose()
