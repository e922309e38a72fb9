"""Who acknowledges a delivery, on real taskiq workers over real Redis.

With the store in the broker's Redis database (stream delivery), the transition that
ends a run acknowledges (XACK) and deletes (XDEL) the delivery's stream entry itself:
the worker sends neither, and nothing stays in the stream or pending in the group once
the workflow settled. With the store on another server the worker acknowledges as usual.

``MONITOR`` tells the two apart: a command a script ran is shown with the client type
``lua``, one a client sent with its connection's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from mageflow.errors import TaskFailedError
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe
from mageflow.testing.redis_server import redis_server

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = pytest.mark.slow

ITEMS = 20
NO_RESENDS = {"MAGEFLOW_RESEND_AFTER": "600"}
"""The workers' reconciler re-sends a task not started within MAGEFLOW_RESEND_AFTER (1 s in
the test environment): on a loaded machine that adds copies, each acknowledged too, and
the counts below are exact."""


@dataclass
class Acks:
    """The entries of one stream that XACK / XDEL commands seen by MONITOR named, by who
    sent them: the command's name once per entry (one call may finish several)."""

    stream: str
    by_script: list[str] = field(default_factory=list)
    by_client: list[str] = field(default_factory=list)

    def see(self, command: dict[str, Any]) -> None:
        words = str(command.get("command", "")).split()
        if len(words) < 2 or words[0].upper() not in ("XACK", "XDEL"):
            return
        if words[1] != self.stream:
            return
        sender = self.by_script if command.get("client_type") == "lua" else self.by_client
        entries = words[3:] if words[0].upper() == "XACK" else words[2:]
        sender.extend(words[0].upper() for _ in entries)


@contextlib.asynccontextmanager
async def monitored(redis_url: str, stream: str) -> AsyncIterator[Acks]:
    acks = Acks(stream)
    # no read timeout (redis-py's default is 5 s): MONITOR is silent while workers boot
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=None)
    started = asyncio.Event()
    # MONITOR's output lags behind the commands on a loaded machine: at the end an ECHO of
    # this token is sent, and everything before it is read before the block ends
    token = f"mageflow-monitor-end-{uuid.uuid4().hex}"

    async def watch() -> None:
        async with client.monitor() as monitor:
            started.set()
            while True:
                command = await monitor.next_command()
                if token in str(command.get("command", "")):
                    return
                acks.see(command)

    task = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield acks
        await client.echo(token)
        await asyncio.wait_for(asyncio.shield(task), 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def _run_workflows(pool: AppWorkers, redis_url: str, *, delivery: bool) -> Acks:
    """A swarm of ITEMS, a chain and a task that fails for good, on one worker; the
    XACK / XDEL of the broker's stream seen meanwhile."""
    app = pool.client_app()
    contract_tasks.register(app)
    rdb = aioredis.Redis.from_url(redis_url)
    try:
        assert bool(app.engine.delivery) is delivery
        await pool.wait_ready(1, rdb)
        ns = uuid.uuid4().hex[:12]
        async with monitored(redis_url, pool.queue) as acks:
            items = [await app.sign("contract.add", x=i, y=1) for i in range(ITEMS)]
            sw = await app.swarm(tasks=items, is_swarm_closed=True)
            assert await sw.aio_run({"ns": ns}, timeout=30) == [i + 1 for i in range(ITEMS)]
            add = await app.sign("contract.add", y=1)
            double = await app.sign("contract.double", ns=ns)
            wf = await app.chain([add, double])
            assert await wf.aio_run({"ns": ns, "x": 1}, timeout=30) == 4
            give_up = await app.sign("contract.give_up")
            with pytest.raises(TaskFailedError):
                await give_up.aio_run({"ns": ns}, timeout=30)
            if not delivery:  # the worker acknowledges after the run settled: wait for it
                await _until_nothing_pending(rdb, pool.queue)
            # settled: with delivery, the last finish acknowledged its entry atomically
            assert await rdb.xlen(pool.queue) == 0
            assert (await rdb.xpending(pool.queue, "taskiq"))["pending"] == 0
        return acks
    finally:
        await app.aclose()
        await rdb.aclose()


async def _until_nothing_pending(rdb: aioredis.Redis, stream: str) -> None:
    for _ in range(200):
        if (await rdb.xpending(stream, "taskiq"))["pending"] == 0:
            return
        await asyncio.sleep(0.05)


async def test_the_finish_acknowledges_the_delivery_when_the_store_shares_the_broker(
    make_app_workers: MakeAppWorkers, redis_url: str
) -> None:
    pool = make_app_workers(extra_env=NO_RESENDS)
    pool.start("mageflow", concurrency=4)
    acks = await _run_workflows(pool, redis_url, delivery=True)
    assert acks.by_client == [], "the worker acknowledged deliveries itself"
    runs = ITEMS + 2 + 1  # swarm items, chain steps, the failing task
    assert acks.by_script.count("XACK") == runs
    assert acks.by_script.count("XDEL") == runs


async def test_the_worker_acknowledges_when_the_store_is_elsewhere(
    make_app_workers: MakeAppWorkers, redis_url: str
) -> None:
    with redis_server() as store:
        pool = make_app_workers(store_url=store.url, extra_env=NO_RESENDS)
        pool.start("mageflow", concurrency=4)
        acks = await _run_workflows(pool, redis_url, delivery=False)
        pool.stop_all()
    assert acks.by_script == []
    runs = ITEMS + 2 + 1
    assert acks.by_client.count("XACK") == runs
    assert acks.by_client.count("XDEL") == runs


async def test_two_copies_of_one_run_in_one_worker_are_each_acknowledged_once(
    make_app_workers: MakeAppWorkers, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two entries of one run id (a re-sent message beside its original) read by one
    worker: the run that finishes acknowledges its own entry inside the finish, the copy
    that the engine turns away is acknowledged by the worker; the user code runs once."""
    monkeypatch.setenv("MAGEFLOW_RESEND_AFTER", "600")  # no third copy from the reconciler
    pool = make_app_workers(extra_env={"MAGEFLOW_LEASE": "0.6", "MAGEFLOW_RESEND_AFTER": "600"})
    app = pool.client_app()
    contract_tasks.register(app)
    rdb = aioredis.Redis.from_url(redis_url, decode_responses=True)
    probe = RedisProbe(redis_url)
    try:
        assert app.engine.delivery
        await rdb.xgroup_create(pool.queue, "taskiq", id="0", mkstream=True)
        ns = uuid.uuid4().hex[:12]
        sig = await app.sign("contract.add", ns=ns, y=1)
        await sig.aio_run_no_wait({"x": 1})
        ((entry_id, fields),) = await rdb.xrange(pool.queue)
        message = json.loads(fields["data"])
        message["kwargs"]["payload"].pop("fold", None)  # as the reconciler re-sends it
        await rdb.xdel(pool.queue, entry_id)
        copy = json.dumps(message)
        await rdb.xadd(pool.queue, {"data": copy})
        await rdb.xadd(pool.queue, {"data": copy})
        async with monitored(redis_url, pool.queue) as acks:
            pool.start("mageflow", concurrency=4)
            assert await sig.wait(timeout=30) == 2
            await _until_nothing_pending(rdb, pool.queue)
            assert await rdb.xlen(pool.queue) == 0
            assert (await rdb.xpending(pool.queue, "taskiq"))["pending"] == 0
        assert len(await probe.events(ns, "add")) == 1
        assert acks.by_script.count("XACK") == 1, acks
        assert acks.by_client.count("XACK") == 1, acks
    finally:
        await app.aclose()
        await rdb.aclose()
        await probe.close()
