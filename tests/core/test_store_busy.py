"""A Redis busy running a long script (BUSY) is a store that cannot answer now, not an
engine failure: the call ran nothing, so workers send it again, as after a restart."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis

from mageflow.engine import SCRIPT
from mageflow.errors import StoreUnavailableError
from mageflow.store import RedisStore
from mageflow.testing.redis_server import redis_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

BUSY_FOR = 1.5
SPIN = (
    "local start = tonumber(redis.call('TIME')[1]) "
    "while tonumber(redis.call('TIME')[1]) - start < tonumber(ARGV[1]) do end return 1"
)


async def test_a_busy_redis_is_unavailable_not_an_engine_error() -> None:
    # a server of its own: the long script would stall every other test on a shared one
    with redis_server() as server:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("lua-time-limit", 100)  # BUSY after 0.1 s of a script
        spinner = threading.Thread(target=admin.eval, args=(SPIN, 0, str(BUSY_FOR + 1)))
        store = RedisStore(server.url, prefix=f"busy-{uuid.uuid4().hex[:6]}")
        started = time.monotonic()
        spinner.start()
        await asyncio.sleep(0.5)
        with pytest.raises(StoreUnavailableError, match="busy running a script"):
            await store.run_script(
                SCRIPT, [store.hash_key("wf")], ["payload", "1", "60", "60", "1000", "", "x"]
            )
        assert time.monotonic() - started < BUSY_FOR + 1  # refused while the script ran
        spinner.join()
        # once the script ended, the same call runs
        assert await store.run_script(
            SCRIPT, [store.hash_key("wf")], ["payload", "1", "60", "60", "1000", "", "x"]
        ) == ["missing"]
        admin.close()
        await store.close()
