"""The embedded default's cost per chain step and per swarm item, against a real local
Redis measured in the same run (not a test; prints figures and ratios).

Both runs use the in-process ``local`` backend; only the store differs: ``MemoryStore``
(the engine script in-process) or ``RedisStore`` on a throwaway local Redis server. Run it
from another checkout's tree (``PYTHONPATH=<tree>/packages/mageflow-core/src``) to compare
two versions of the core; it uses only the public API.

    python bench/embedded_cost.py [--steps 300] [--items 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from core_roundtrips import build_app

from mageflow import Mageflow, SwarmConfig
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.redis_server import redis_server


async def per_unit(app: Mageflow, steps: int, items: int) -> tuple[float, float]:
    wf = await app.chain(["noop"] + ["pass"] * (steps - 1))
    started = time.perf_counter()
    await wf.aio_run({}, timeout=300)
    step = (time.perf_counter() - started) / steps
    sw = await app.swarm(
        ["noop"] * items, config=SwarmConfig(max_concurrency=100), is_swarm_closed=True
    )
    started = time.perf_counter()
    await sw.aio_run({}, timeout=600)
    item = (time.perf_counter() - started) / items
    return step, item


async def main(args: argparse.Namespace) -> None:
    with redis_server() as server:
        results: dict[str, list[tuple[float, float]]] = {"memory": [], "redis": []}
        for _ in range(args.repeat):
            for name in ("memory", "redis"):
                store: Any = MemoryStore() if name == "memory" else RedisStore(server.url)
                app = build_app(store)
                await per_unit(app, 20, 50)  # warm up: script load, connections
                results[name].append(await per_unit(app, args.steps, args.items))
                await app.aclose()
        med = {
            name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            for name, runs in results.items()
        }
        print(
            f"redis {server.version} ({server.strategy}); local backend; medians of "
            f"{args.repeat} runs"
        )
        for name, (step, item) in med.items():
            print(f"{name:<7} chain step {step * 1e6:8.1f} us   swarm item {item * 1e6:8.1f} us")
        print(
            f"embedded / redis: chain step {med['memory'][0] / med['redis'][0]:.2f}, "
            f"swarm item {med['memory'][1] / med['redis'][1]:.2f} (target < 1)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
