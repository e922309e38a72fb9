"""A RedisStore is usable from several event loops (redis-py binds connections to one)."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from mageflow import Mageflow
from mageflow.store import RedisStore
from mageflow.testing.manual import ManualBackend


def test_redis_store_serves_several_event_loops(redis_url: str) -> None:
    """One store (e.g. a module-level Mageflow) used from one loop per test."""
    import asyncio

    store = RedisStore(aioredis.Redis.from_url(redis_url), prefix=f"loops-{uuid.uuid4().hex[:6]}")
    mf = Mageflow(backend=ManualBackend(), store=store)

    @mf.task("t")
    async def t(msg: dict[str, Any]) -> None:
        return None

    async def once() -> str:
        sig = await mf.sign("t")
        return str(await sig.get_status())

    assert asyncio.run(once()) == asyncio.run(once()) == "SignatureStatus.PENDING"
