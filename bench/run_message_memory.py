"""Redis memory per swarm item with a large run message (not a test; prints figures).

Builds a closed swarm of N no-op items on a throwaway local Redis, runs it with a run
message of ``--message-kb`` kB and with an empty one (the baseline, same run), and prints
the Redis memory per item while it is built and once it finished, and the difference the
message makes per item (target: <= 1 kB per finished item for a 10 kB message: the
message is stored once per workflow, never copied per item).

    python bench/run_message_memory.py [--items 5000] [--message-kb 10]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.store import RedisStore
from mageflow.testing.redis_server import redis_server


async def used(client: aioredis.Redis, wf: str) -> int:
    """Bytes the workflow's own keys take (``MEMORY USAGE``, every field counted)."""
    total = 0
    async for key in client.scan_iter(match=f"*{{{wf}}}*", count=1000):
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def measure(url: str, items: int, message: dict[str, Any]) -> tuple[float, float]:
    """Bytes per item of the workflow's keys once built and once finished."""
    client = aioredis.Redis.from_url(url)
    store = RedisStore(url, prefix=f"mem-{uuid.uuid4().hex[:6]}")
    mf = Mageflow(backend=LocalBackend(workers=2, concurrency=50), store=store)

    @mf.task("noop")
    async def noop(msg: dict[str, Any]) -> int:
        return 1

    sw = await mf.swarm_of(
        "noop", [{"i": i} for i in range(items)], is_swarm_closed=True,
        config=SwarmConfig(max_concurrency=100),
    )  # fmt: skip
    wf = sw.key.split(".")[0]
    built = await used(client, wf) / items
    await sw.aio_run(message, timeout=600)
    finished = await used(client, wf) / items
    await mf.aclose()
    await client.aclose()
    return built, finished


async def main(items: int, kb: int) -> None:
    with redis_server() as server:
        big = {"blob": "x" * (kb * 1024)}
        empty_built, empty_done = await measure(server.url, items, {})
        big_built, big_done = await measure(server.url, items, big)
    print(f"{items} items, run message {kb} kB")
    print(f"  bytes/item built:    empty {empty_built:8.0f}   {kb} kB message {big_built:8.0f}")
    print(f"  bytes/item finished: empty {empty_done:8.0f}   {kb} kB message {big_done:8.0f}")
    print(f"  the message's cost per finished item: {big_done - empty_done:.0f} bytes"
          f" (target <= 1024)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--message-kb", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.items, args.message_kb))
