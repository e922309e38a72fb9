"""A MageFlow app on taskiq, served by real worker processes in the contract and crash tests.

Both ways of running it are used:

    mageflow worker tests.taskiq.contract_app:mf --concurrency 4
    taskiq worker tests.taskiq.contract_app:broker --workers 2 \\
        --receiver mageflow_taskiq.backend:ShutdownSafeReceiver

Everything comes from the environment the test gives the worker: the broker
(``MAGEFLOW_TASKIQ_URL``, ``MAGEFLOW_TASKIQ_QUEUE``, ``MAGEFLOW_TASKIQ_IDLE_TIMEOUT``), the
store (``MAGEFLOW_REDIS_URL``, ``MAGEFLOW_KEY_PREFIX``), the probe the contract tasks write
to (``MAGEFLOW_PROBE_URL``) and the fault directory (``MAGEFLOW_FAULT_DIR``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState

from mageflow import Backoff, Mageflow
from mageflow.testing import contract_tasks
from mageflow_taskiq.backend import ENV_QUEUE, TaskiqBackend

ENV_PROBE = "MAGEFLOW_PROBE_URL"
ENV_READY = "MAGEFLOW_CONTRACT_READY"
"""Where a worker announces itself when it is given no queue name (else: the queue)."""

mf = Mageflow(backend="taskiq")
contract_tasks.register(mf)
assert isinstance(mf.backend, TaskiqBackend)
broker: AsyncBroker = mf.backend.broker

_clients: dict[int, aioredis.Redis] = {}


def probe_client() -> aioredis.Redis:
    """One client of the probe Redis per process (taskiq forks its worker processes)."""
    found = _clients.get(os.getpid())
    if found is None:
        found = _clients[os.getpid()] = aioredis.Redis.from_url(
            os.environ[ENV_PROBE], decode_responses=True
        )
    return found


def ready_key(queue: str) -> str:
    return f"mageflow-contract:{queue}:ready"


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def announce(_state: TaskiqState) -> None:
    """Tell the test which worker processes are serving (their pids)."""
    ready = os.environ.get(ENV_READY) or os.environ[ENV_QUEUE]
    await probe_client().sadd(ready_key(ready), os.getpid())


# Running items of a namespace are a *set of item ids* (not a counter): a worker killed
# mid-task never leaves, but its item keeps its swarm slot until the redelivered message
# runs it again under the same id, so the set size is exactly the number of slots held.
_ENTER = """
redis.call('SADD', KEYS[1], ARGV[1])
local n = redis.call('SCARD', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > m then redis.call('SET', KEYS[2], n) end
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 3600)
return n
"""


def crash_key(ns: str, *parts: str) -> str:
    """Keys of ``crash.item``; ``max`` is where :class:`RedisProbe` keeps ``max_running``."""
    return ":".join(("mageflow-probe", ns, *parts))


@mf.task("crash.item")
async def crash_item(message: dict[str, Any]) -> int:
    """A swarm item for the crash test: records every run (with its pid and time) and
    every completion of its user code, and the number of items running at once."""
    ns, item = message["ns"], int(message["id"])
    client = probe_client()
    await client.rpush(crash_key(ns, "runs"), f"{item}:{os.getpid()}:{time.time():.6f}")
    await client.eval(_ENTER, 2, crash_key(ns, "running"), crash_key(ns, "max"), item)
    try:
        await asyncio.sleep(float(message.get("seconds", 0.1)))
    finally:
        await client.srem(crash_key(ns, "running"), item)
    await client.rpush(crash_key(ns, "done"), item)
    return item


CRASH_BACKOFF = 3.0
"""Seconds ``crash.backoff`` waits before its retry."""


@mf.task("crash.backoff", retries=1, backoff=Backoff.constant(CRASH_BACKOFF))
async def crash_backoff(message: dict[str, Any]) -> str:
    """Fails its first attempt; records every attempt with its pid and time."""
    runs = await probe_client().rpush(
        crash_key(message["ns"], "backoff"), f"{os.getpid()}:{time.time():.6f}"
    )
    if runs == 1:
        raise RuntimeError("the first attempt fails")
    return "recovered"


@mf.task("crash.freeze")
async def crash_freeze(message: dict[str, Any]) -> str:
    """Blocks its worker's event loop for ``seconds`` (no claim or lease is renewed
    meanwhile, as in a worker frozen by a stop-the-world pause); records every run."""
    await probe_client().rpush(crash_key(message["ns"], "freeze"), os.getpid())
    await asyncio.sleep(float(message.get("warm", 0)))  # runs a while before it freezes
    time.sleep(float(message["seconds"]))  # noqa: ASYNC251 (the point: a frozen loop)
    return "thawed"
