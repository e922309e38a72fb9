"""RedisStore runs the engine as a Redis function where the server has them (Redis 7+):
the library is loaded once (its ~150 definitions run at load, not on every call), reloaded
when the server lost it, and a server or user without functions gets EVALSHA."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.engine import SCRIPT
from mageflow.store import RedisStore
from mageflow.testing.redis_server import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def calls(url: str) -> dict[str, int]:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def libraries(url: str) -> list[str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        listed: Any = await client.execute_command("FUNCTION", "LIST")
    finally:
        await client.aclose()
    return [lib["library_name"] if isinstance(lib, dict) else lib[1] for lib in listed]


def app_on(store: RedisStore) -> Mageflow:
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=4), store=store)

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        return int(msg.get("mageflow_results") or 0) + 1

    return mf


async def run_chain_and_swarm(mf: Mageflow) -> None:
    chain = await mf.chain([await mf.sign("inc") for _ in range(5)])
    assert await chain.aio_run({}, timeout=10) == 5
    swarm = await mf.swarm([await mf.sign("inc") for _ in range(20)], is_swarm_closed=True)
    assert await swarm.aio_run({}, timeout=10) == [1] * 20


async def run_on(store: RedisStore) -> None:
    """A chain and a swarm to the end on ``store``, in an app of their own."""
    mf = app_on(store)
    try:
        await run_chain_and_swarm(mf)
    finally:
        await mf.aclose()


@pytest.fixture
def prefix() -> str:
    return f"fn-{uuid.uuid4().hex[:8]}"


async def test_redis7_runs_the_engine_as_a_function(redis7_url: str, prefix: str) -> None:
    # the script cache as if new: another test may have run the engine by EVALSHA here
    client = aioredis.Redis.from_url(redis7_url)
    await client.script_flush()
    before = await calls(redis7_url)
    store = RedisStore(redis7_url, prefix=prefix)
    assert store.runs_functions is None
    await run_on(store)
    after = await calls(redis7_url)
    assert store.runs_functions is True
    assert SCRIPT.function in await libraries(redis7_url)
    fcalls = after.get("fcall", 0) - before.get("fcall", 0)
    assert fcalls > 25  # every transition of 5 steps and 20 items, at least
    # the engine never went by EVALSHA (other, small scripts may)
    assert await client.script_exists(SCRIPT.sha) == [False]
    await client.aclose()


async def test_a_library_another_process_loaded_is_used(redis7_url: str, prefix: str) -> None:
    await run_on(RedisStore(redis7_url, prefix=prefix))  # loads the library, if not there yet
    assert SCRIPT.function in await libraries(redis7_url)
    store = RedisStore(redis7_url, prefix=prefix)
    await run_on(store)
    assert store.runs_functions is True


async def test_a_lost_library_is_loaded_again(redis7_url: str, prefix: str) -> None:
    mf = app_on(RedisStore(redis7_url, prefix=prefix))
    try:
        chain = await mf.chain([await mf.sign("inc") for _ in range(3)])
        assert await chain.aio_run({}, timeout=10) == 3
        client = aioredis.Redis.from_url(redis7_url)
        await client.execute_command("FUNCTION", "FLUSH")
        await client.aclose()
        assert SCRIPT.function not in await libraries(redis7_url)
        await run_chain_and_swarm(mf)
        assert SCRIPT.function in await libraries(redis7_url)
    finally:
        await mf.aclose()


async def test_a_user_without_functions_gets_evalsha(redis7_url: str, prefix: str) -> None:
    admin = aioredis.Redis.from_url(redis7_url)
    user, password = f"nofn{uuid.uuid4().hex[:6]}", "pw"
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-fcall", "-function"
    )
    await admin.aclose()
    host_port = redis7_url.split("//", 1)[1]
    before = await calls(redis7_url)
    store = RedisStore(f"redis://{user}:{password}@{host_port}", prefix=prefix)
    await run_on(store)
    after = await calls(redis7_url)
    assert store.runs_functions is False
    assert after.get("evalsha", 0) - before.get("evalsha", 0) > 25


async def test_redis_before_7_gets_evalsha(redis_srv: RedisServer, prefix: str) -> None:
    if int(redis_srv.version.split(".")[0]) >= 7:
        pytest.skip(f"the session's Redis is {redis_srv.version}: it runs functions")
    before = await calls(redis_srv.url)
    store = RedisStore(redis_srv.url, prefix=prefix)
    await run_on(store)
    after = await calls(redis_srv.url)
    assert after.get("evalsha", 0) - before.get("evalsha", 0) > 25
    assert store.runs_functions is False  # refused once ("unknown command"), then remembered
