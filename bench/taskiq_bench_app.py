"""The worker app of ``bench/taskiq_bench.py``: raw taskiq tasks and MageFlow tasks on one
broker, served by one worker process (``mageflow worker taskiq_bench_app:mf``).

Configured from the environment the benchmark sets: the broker (``MAGEFLOW_TASKIQ_URL``,
``MAGEFLOW_TASKIQ_QUEUE``), the store (``MAGEFLOW_REDIS_URL``) and ``BENCH_SIGNAL_URL``, a
third Redis on which tasks tell the benchmark they are done, so that neither the broker's
nor the store's command counts include the benchmark's own signalling.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState

from mageflow import Mageflow
from mageflow_taskiq.backend import TaskiqBackend

ENV_SIGNAL = "BENCH_SIGNAL_URL"

mf = Mageflow(backend="taskiq")
assert isinstance(mf.backend, TaskiqBackend)
broker: AsyncBroker = mf.backend.broker

_signal: dict[int, aioredis.Redis] = {}


def signal() -> aioredis.Redis:
    client = _signal.get(os.getpid())
    if client is None:
        client = _signal[os.getpid()] = aioredis.Redis.from_url(os.environ[ENV_SIGNAL])
    return client


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def announce(_state: TaskiqState) -> None:
    await signal().rpush("bench:ready", os.getpid())


# -- raw taskiq ---------------------------------------------------------------------------
_counts: dict[str, int] = {}


@broker.task(task_name="raw.noop")
async def raw_noop(batch: str, total: int) -> None:
    """A no-op; the last of ``total`` (counted in this process: one worker) signals."""
    done = _counts[batch] = _counts.get(batch, 0) + 1
    if done == total:
        del _counts[batch]
        await signal().rpush(f"bench:{batch}", "done")


@broker.task(task_name="raw.hop")
async def raw_hop(reply: str) -> None:
    """One hop: the benchmark waits for this push (BLPOP)."""
    await signal().rpush(reply, "1")


# Raw taskiq doing what the swarm and the chain do: the worker publishes the next task.
_left: dict[str, int] = {}
_times: dict[str, list[float]] = {}


@broker.task(task_name="raw.relay")
async def raw_relay(batch: str, total: int, width: int) -> None:
    """``width`` relays run at once (kicked by the benchmark); each finishing one kicks
    the next until ``total`` ran, like a swarm refilling its free slot."""
    left = _left.setdefault(batch, total - width)
    if left > 0:
        _left[batch] = left - 1
        await raw_relay.kiq(batch, total, width)
    done = _counts[batch] = _counts.get(batch, 0) + 1
    if done == total:
        del _counts[batch], _left[batch]
        await signal().rpush(f"bench:{batch}", "done")


@broker.task(task_name="raw.relay_chain")
async def raw_relay_chain(batch: str, steps: int) -> None:
    """A chain in raw taskiq: each step notes when it started and kicks the next one."""
    times = _times.setdefault(batch, [])
    times.append(time.perf_counter())
    if len(times) < steps:
        await raw_relay_chain.kiq(batch, steps)
    else:
        del _times[batch]
        await signal().rpush(f"bench:{batch}", json.dumps(times))


# -- MageFlow -------------------------------------------------------------------------------
_step_times: list[float] = []


@mf.task("bench.noop")
async def noop(message: dict[str, Any]) -> int:
    return 1


@mf.task("bench.step")
async def step(message: dict[str, Any]) -> None:
    """A chain step: notes when it started (in this process, no Redis command)."""
    _step_times.append(time.perf_counter())


@mf.task("bench.report")
async def report(message: dict[str, Any]) -> None:
    """Success callback: pushes the result count and the step start times."""
    results = message.get("mageflow_results")
    body = {
        "results": len(results) if isinstance(results, list) else None,
        "step_times": list(_step_times),
    }
    _step_times.clear()
    await signal().rpush(message["reply"], json.dumps(body))


@mf.task("bench.none")
async def none(message: dict[str, Any]) -> None:
    """A no-op returning None (bench/scale.py)."""
