"""A taskiq app for the transport tests, served by real ``taskiq worker`` processes.

``taskiq worker tests.taskiq.transport_app:broker`` imports this module, which builds the
backend from the environment (``MAGEFLOW_TASKIQ_URL`` and friends) and registers the
tasks. Handlers append what they saw, as JSON, to the Redis list named by the payload's
``rec`` field, so the test process can read it back.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import TaskiqEvents, TaskiqState

from mageflow.backend.base import HEADER_KEY, OutgoingTask, RunContext, TaskDefinition
from mageflow.errors import NonRetryableError
from mageflow_taskiq.backend import ENV_QUEUE, ENV_URL, TaskiqBackend

backend = TaskiqBackend.from_options({})
broker = backend.broker

_clients: dict[int, aioredis.Redis] = {}


def client() -> aioredis.Redis:
    found = _clients.get(os.getpid())
    if found is None:
        found = _clients[os.getpid()] = aioredis.Redis.from_url(os.environ[ENV_URL])
    return found


def ready_key(queue: str) -> str:
    return f"{queue}:ready"


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def announce(_state: TaskiqState) -> None:
    """Tell the test which worker processes are up (their pids)."""
    await client().sadd(ready_key(os.environ[ENV_QUEUE]), os.getpid())


async def record(payload: Any, ctx: RunContext, event: str = "run") -> None:
    entry = {
        "event": event,
        "task": ctx.task_name,
        "payload": payload,
        "run_id": ctx.run_id,
        "attempt": ctx.attempt,
        "final": ctx.is_final_attempt,
        "headers": dict(ctx.headers),
        "pid": os.getpid(),
        "t": time.time(),
    }
    await client().rpush(payload["rec"], json.dumps(entry))


async def echo(payload: Any, ctx: RunContext) -> Any:
    await record(payload, ctx)
    return payload


async def flaky(payload: Any, ctx: RunContext) -> Any:
    await record(payload, ctx)
    if ctx.attempt < payload.get("succeed_on", 1_000):
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return "ok"


async def fatal(payload: Any, ctx: RunContext) -> Any:
    await record(payload, ctx)
    raise NonRetryableError("retrying cannot help")


async def slow(payload: Any, ctx: RunContext) -> Any:
    await record(payload, ctx, "start")
    await asyncio.sleep(payload["sleep"])
    await record(payload, ctx, "end")
    return "slept"


async def fanout(payload: Any, ctx: RunContext) -> Any:
    """Publishes from inside a worker, as the core does for the next step of a chain."""
    await record(payload, ctx)
    children = [
        OutgoingTask("transport.echo", {"rec": payload["rec"], "i": i}, {HEADER_KEY: f"c{i}"})
        for i in range(payload["n"])
    ]
    return await backend.publish_many(children)


backend.register(TaskDefinition(name="transport.echo", handler=echo))
backend.register(TaskDefinition(name="transport.fanout", handler=fanout))
backend.register(TaskDefinition(name="transport.flaky", handler=flaky, retries=3))
backend.register(TaskDefinition(name="transport.fatal", handler=fatal, retries=3))
backend.register(TaskDefinition(name="transport.slow", handler=slow))
