"""A complete MageFlow adapter in one page: tasks travel over a Redis list.

It is the example of docs/adapters.md and passes the contract suite
(tests/docs/test_adapter_example.py). It is deliberately minimal: BLPOP takes a message
off the list for good, so a worker killed mid-task loses it. What a dead worker owed
(the next step it had recorded but not published) is not lost: the core's reconciler,
which ``serve`` starts through ``worker_started()``, re-sends it. Run a worker with
``mageflow worker app:mf``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from mageflow import Capabilities, RunContext, TaskBackend, TaskDefinition
from mageflow.backend.base import OutgoingTask
from mageflow.errors import ConfigurationError, NonRetryableError


class RedisListBackend(TaskBackend):
    name = "redis-list"
    capabilities = Capabilities(cancel_running=False, priorities=False, delayed_start=False)

    def __init__(self, url: str, queue: str = "mageflow-tasks", slots: int = 10) -> None:
        self.url, self.queue, self.slots = url, queue, slots
        self.definitions: dict[str, TaskDefinition] = {}
        self._client: aioredis.Redis | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisListBackend:
        if "url" not in options:
            raise ConfigurationError("the redis-list backend needs url='redis://...'")
        return cls(**options)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, decode_responses=True)
        return self._client

    # 1. make a task runnable by name
    def register(self, definition: TaskDefinition) -> None:
        self.definitions[definition.name] = definition

    # 2. publish by name with a JSON payload and string headers
    async def publish(self, task: OutgoingTask) -> str:
        run_id = uuid.uuid4().hex
        message = {
            "task": task.task_name,
            "payload": task.payload,
            "headers": dict(task.headers),
            "run_id": run_id,
            "attempt": 1,
        }
        await self.client.rpush(self.queue, json.dumps(message))  # type: ignore[misc]
        return run_id

    # 3. run workers: hand each message to the core's wrapper with a RunContext
    async def serve(self) -> None:
        self.worker_started()  # lets the core run its reconciler in this worker
        slots = asyncio.Semaphore(self.slots)
        running: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            popped = await self.client.blpop([self.queue], timeout=1)  # type: ignore[misc]
            if popped is None:
                slots.release()
                continue
            job = asyncio.create_task(self._run(json.loads(popped[1])))
            running.add(job)
            job.add_done_callback(lambda t: (running.discard(t), slots.release()))

    async def _run(self, message: dict[str, Any]) -> None:
        definition = self.definitions[message["task"]]
        ctx = RunContext(
            task_name=definition.name,
            run_id=message["run_id"],
            attempt=message["attempt"],
            is_final_attempt=message["attempt"] > definition.retries,
            headers=message["headers"],
        )
        # a retry waits out its backoff (asyncio: the other tasks keep running)
        await asyncio.sleep(max(0.0, message.get("not_before", 0.0) - time.time()))
        try:
            await definition.handler(message["payload"], ctx)
        except NonRetryableError:
            pass
        except Exception:
            if not ctx.is_final_attempt:  # retry: same run id, next attempt, after backoff
                message["attempt"] += 1
                message["not_before"] = time.time() + definition.retry_delay(ctx.attempt)
                await self.client.rpush(self.queue, json.dumps(message))  # type: ignore[misc]

    def run_worker(self, *, concurrency: int | None = None) -> None:
        self.slots = concurrency or self.slots
        asyncio.run(self.serve())

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
