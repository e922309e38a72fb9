"""Build cost per swarm item (not a test; prints figures and ratios, never asserts).

Measures, in one run, how long *building* (not running) a swarm takes per item, on a
throwaway local Redis server (``RedisStore``) and on the embedded ``MemoryStore``:

- ``swarm_of``      ``mf.swarm_of(task, items)``: one task, N kwargs dicts, one write
- ``add_tasks``     ``sw.add_tasks(task, items)`` on an open swarm
- ``sign``          ``mf.sign(task, i=i)`` N times (reported on its own)
- ``swarm(signed)`` ``mf.swarm(signatures)``: the N pre-signed signatures moved in
- ``swarm(names)``  ``mf.swarm([name] * N)``: the per-item path, no kwargs

and the ratio of the per-item cost at the largest N to the smallest (target: <= 20 us per
item on Redis for the bulk paths, ratio <= 1.2 for every path). On a core without
``swarm_of`` / ``add_tasks`` the per-item ``add_task`` loop is measured instead of
``add_tasks``, so the same script re-measures older versions (run it with that tree's
``packages/mageflow-core/src`` first on ``PYTHONPATH``).

    python bench/build_cost.py [--sizes 1000,20000,100000] [--stores redis,memory]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from core_roundtrips import build_app

from mageflow import Mageflow, SwarmConfig
from mageflow.store import MemoryStore, RedisStore, StateStore
from mageflow.testing.redis_server import redis_server

CONFIG = SwarmConfig(max_concurrency=100)


def kwargs_of(n: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(n)]


CPU: list[aioredis.Redis | None] = [None]
"""The bench server's client, to read its CPU time (None: memory store)."""
CPU_SPENT: dict[str, float] = {}


async def cpu_now() -> float:
    """CPU seconds used so far by this process and the Redis server: unlike wall time,
    other load on a shared machine does not inflate it."""
    server = 0.0
    if CPU[0] is not None:
        info = await CPU[0].info("cpu")
        server = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return time.process_time() + server


async def timed(run: Callable[[], Awaitable[Any]], label: str = "") -> tuple[float, Any]:
    """Wall seconds ``run`` took (its CPU seconds go to ``CPU_SPENT[label]``)."""
    cpu = await cpu_now()
    started = time.perf_counter()
    value = await run()
    elapsed = time.perf_counter() - started
    CPU_SPENT[label] = await cpu_now() - cpu
    return elapsed, value


async def measure_size(app: Mageflow, n: int) -> dict[str, float | None]:
    """Per-item build cost (seconds) of each path for an N-item swarm; ``<path> cpu``:
    CPU seconds per item of client and server."""
    out: dict[str, float | None] = {}
    CPU_SPENT.clear()
    items = kwargs_of(n)
    if hasattr(app, "swarm_of"):
        elapsed, _ = await timed(lambda: app.swarm_of("noop", items, config=CONFIG), "swarm_of")
        out["swarm_of"] = elapsed / n
        sw = await app.swarm(config=CONFIG)
        elapsed, _ = await timed(lambda: sw.add_tasks("noop", items), "add_tasks")
        out["add_tasks"] = elapsed / n
    else:
        out["swarm_of"] = None
        sw = await app.swarm(config=CONFIG)

        async def loop() -> None:
            for kw in items:
                await sw.add_task("noop", **kw)

        elapsed, _ = await timed(loop, "add_task loop")
        out["add_task loop"] = elapsed / n

    async def sign_all() -> list[Any]:
        return [await app.sign("noop", i=i) for i in range(n)]

    elapsed, signed = await timed(sign_all, "sign")
    out["sign"] = elapsed / n
    elapsed, _ = await timed(lambda: app.swarm(signed, config=CONFIG), "swarm(signed)")
    out["swarm(signed)"] = elapsed / n
    elapsed, _ = await timed(lambda: app.swarm(["noop"] * n, config=CONFIG), "swarm(names)")
    out["swarm(names)"] = elapsed / n
    for path in list(out):
        out[f"{path} cpu"] = None if out[path] is None else CPU_SPENT[path] / n
    return out


def report(store_name: str, sizes: list[int], rows: dict[int, dict[str, float | None]]) -> None:
    paths = list(rows[sizes[0]])
    head = "".join(f"{f'n={n}':>12}" for n in sizes)
    print(f"\n{store_name}: build cost per item (us); 'cpu' rows: client + server CPU time")
    print(f"{'path':<16}{head}{f'n={sizes[-1]}/n={sizes[0]}':>16}")
    for path in paths:
        cells = [rows[n].get(path) for n in sizes]
        shown = "".join(f"{'n/a':>12}" if c is None else f"{c * 1e6:12.1f}" for c in cells)
        first, last = cells[0], cells[-1]
        ratio = "n/a" if first is None or last is None else f"{last / first:.2f}"
        print(f"{path:<16}{shown}{ratio:>16}")


async def run_store(name: str, url: str, sizes: list[int]) -> None:
    rows: dict[int, dict[str, float | None]] = {}
    client = aioredis.Redis.from_url(url)
    CPU[0] = client if name == "redis" else None
    for n in sizes:
        store: StateStore = MemoryStore() if name == "memory" else RedisStore(url)
        app = build_app(store)
        await measure_size(app, 50)  # warm up: script load, connections, caches
        rows[n] = await measure_size(app, n)
        await app.aclose()
        await client.flushdb()
    await client.aclose()
    report(name, sizes, rows)


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    with redis_server() as server:
        print(f"redis {server.version} ({server.strategy}); local backend; sizes {sizes}")
        print("targets: bulk paths <= 20 us per item on redis; largest/smallest ratio <= 1.2")
        print("(wall time counts other load on a shared machine; the cpu rows do not)")
        for name in args.stores.split(","):
            await run_store(name, server.url, sizes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,20000,100000")
    parser.add_argument("--stores", default="redis,memory")
    asyncio.run(main(parser.parse_args()))
