"""The store's lean blocking pool: more callers than connections wait and all finish, and
a connection the server dropped is replaced as redis-py's own pool replaces it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from mageflow.store import RedisStore
from mageflow.store.pool import LeanBlockingConnectionPool


async def test_callers_beyond_the_pool_size_wait_and_all_finish(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"pool-{uuid.uuid4().hex[:6]}", max_connections=2)
    client = store.client
    assert isinstance(client.connection_pool, LeanBlockingConnectionPool)
    key = f"{store.prefix}:n"

    async def bump() -> None:
        # BLPOP holds its connection a while: the other callers queue for it
        await client.blpop([f"{key}:never"], timeout=0.01)
        await client.incr(key)

    await asyncio.gather(*(bump() for _ in range(40)))
    assert await client.get(key) == "40"
    pool = client.connection_pool
    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    assert len(pool._available_connections) <= 2  # type: ignore[attr-defined]
    await client.aclose()


@pytest.mark.parametrize(
    "pool_class", [aioredis.BlockingConnectionPool, LeanBlockingConnectionPool]
)
async def test_a_connection_the_server_dropped_is_replaced(
    redis_url: str, pool_class: type[aioredis.BlockingConnectionPool]
) -> None:
    """As with redis-py's own pool: the call that meets the dropped connection fails, the
    next one runs on a new connection."""
    pool = pool_class.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    await client.set("pool-dropped", "v")
    admin = aioredis.Redis.from_url(redis_url)
    await admin.client_kill_filter(_id=await client.client_id())
    await admin.aclose()
    await asyncio.sleep(0.05)  # the close has reached the client
    with pytest.raises(RedisConnectionError):
        await client.get("pool-dropped")
    assert await client.get("pool-dropped") == "v"
    await client.aclose()
