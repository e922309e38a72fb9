"""Core benchmark: the local backend on RedisStore (not a test; prints figures).

Measures, in one run against a throwaway Redis server:
- Redis round trips per chain step and per swarm item, from INFO commandstats deltas.
  Client-issued commands are told apart from commands run inside the Lua transitions
  because the client only ever sends commands the scripts never use (EVALSHA, HMGET,
  HSETNX, SUBSCRIBE, ...); the total including in-script commands is shown too.
- per-item time of a 1,000 vs a 20,000 item swarm (target ratio <= 1.2).
- round trips per node of a layered graph (each node requires two nodes of the layer
  before; target <= 2) and per-node time of a 10,000 vs a 1,000 node graph (target
  ratio <= 1.2).

    python bench/core_roundtrips.py [--steps 200] [--small 1000] [--large 20000]
        [--graph-small 1000] [--graph-large 10000] [--graph-width 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from mageflow import Mageflow, Signature, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.store import RedisStore, StateStore
from mageflow.testing.redis_server import redis_server

CLIENT_ONLY = {
    "evalsha",
    "eval",
    "hmget",
    "hsetnx",
    "subscribe",
    "unsubscribe",
    "ping",
    "multi",
    "exec",
    "script|load",
    "script",
    "hgetall",
    "type",
}
# ZADD / ZREM / DEL are used inside the scripts too (the dispatch record), so they are not
# listed: the client sends them only when building a workflow, outside the measured window.


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def build_app(store: StateStore | str) -> Mageflow:
    """The benchmark app: local backend, tasks ``noop`` and ``pass`` (hands the previous
    result on); ``store`` or a Redis URL for a ``RedisStore``."""
    if isinstance(store, str):
        store = RedisStore(store)
    app = Mageflow(backend=LocalBackend(workers=1, concurrency=200), store=store)

    @app.task("noop")
    async def noop(msg: dict[str, Any]) -> int:
        return 1

    @app.task("pass")
    async def pass_on(msg: dict[str, Any]) -> Any:
        return msg.get("mageflow_results", 0)

    return app


async def measure(
    app: Mageflow, client: aioredis.Redis, label: str, units: int, run: Any
) -> tuple[float, dict[str, int]]:
    before = await commandstats(client)
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    used = delta(before, await commandstats(client))
    client_calls = sum(v for k, v in used.items() if k in CLIENT_ONLY)
    total = sum(used.values())
    print(
        f"{label:<28} {units:>7} units  {elapsed * 1000 / units:8.3f} ms/unit  "
        f"round trips/unit {client_calls / units:5.2f}  "
        f"(all commands incl. in-script {total / units:6.2f})"
    )
    return elapsed / units, used


def layered(n: int, width: int) -> dict[str, Any]:
    """``n`` nodes of task ``noop`` in layers of ``width``; node i of a layer requires
    nodes i and i+1 (mod width) of the layer before."""
    nodes: dict[str, Any] = {}
    for i in range(n):
        layer, pos = divmod(i, width)
        if layer == 0:
            nodes[f"n{i}"] = "noop"
        else:
            prev = (layer - 1) * width
            deps = sorted({f"n{prev + pos}", f"n{prev + (pos + 1) % width}"})
            nodes[f"n{i}"] = ("noop", deps)
    return nodes


async def scaling(
    app: Mageflow,
    client: aioredis.Redis,
    unit: str,
    sizes: tuple[int, int],
    repeat: int,
    build: Callable[[int], Awaitable[Signature]],
) -> None:
    """Per-``unit`` time of the workflows ``build(n)`` makes, for both ``sizes``: each
    run's figures, the client commands of the last run, the ratio of the medians."""
    per_unit: dict[int, list[float]] = {}
    for n in sizes:
        per_unit[n] = []
        for rep in range(repeat):
            wf = await build(n)
            cost, used = await measure(
                app,
                client,
                f"{unit} (n={n}, run {rep + 1})",
                n,
                lambda wf=wf: wf.aio_run({}, timeout=600),
            )
            per_unit[n].append(cost)
        print(
            f"    {unit.split()[0]} client commands (last run): "
            f"{ {k: v for k, v in used.items() if k in CLIENT_ONLY} }"
        )
    small, large = (statistics.median(per_unit[n]) for n in sizes)
    print(
        f"per-{unit.split()[-1]} time ratio n={sizes[1]} / n={sizes[0]}: {large / small:.3f} "
        f"(target <= 1.2; medians of {repeat} runs)"
    )


async def main(args: argparse.Namespace) -> None:
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        app = build_app(server.url)
        print(f"redis {server.version} ({server.strategy}); local backend, RedisStore")

        # chain: created first, then measured from run to completion
        steps = args.steps
        wf = await app.chain(["noop"] + ["pass"] * (steps - 1))
        await app.chain(["noop"])  # warm the script cache
        _, used = await measure(
            app, client, "chain step", steps, lambda: wf.aio_run({}, timeout=120)
        )
        print(f"    chain client commands: { {k: v for k, v in used.items() if k in CLIENT_ONLY} }")

        async def swarm_of_noops(n: int) -> Signature:
            cfg = SwarmConfig(max_concurrency=100)
            return await app.swarm(["noop"] * n, config=cfg, is_swarm_closed=True)

        async def layered_graph(n: int) -> Signature:
            return await app.graph(layered(n, args.graph_width), max_concurrency=100)

        await scaling(
            app, client, "swarm item", (args.small, args.large), args.repeat, swarm_of_noops
        )
        await scaling(
            app,
            client,
            "graph node",
            (args.graph_small, args.graph_large),
            args.repeat,
            layered_graph,
        )
        await app.aclose()
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--graph-small", type=int, default=1000)
    parser.add_argument("--graph-large", type=int, default=10000)
    parser.add_argument("--graph-width", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
