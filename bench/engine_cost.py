"""Engine benchmark: Redis's own cost of one orchestrated swarm item on the fused path
(not a test; prints figures).

No task manager and no worker: the engine appends each dispatched item's message to a
Redis stream itself (stream delivery, with a minimal message template), and this script
plays the worker, reading each message and finishing it as a first delivery (``finish``
with ``first_run``: one engine call per item). So the figures are the engine script's
alone, free of worker and broker noise:

- Redis CPU per item (``used_cpu_user + used_cpu_sys`` delta of the server);
- script time per item (``INFO commandstats`` usec of ``evalsha``, which includes the
  commands the script runs);
- commands the script runs per item, by command.

    python bench/engine_cost.py [--items 5000] [--cap 100] [--repeat 3] [--batch 1]
    python bench/engine_cost.py --callgrind [--items 300] [--batch 1]

``--batch k`` finishes k items at once, as a worker whose tasks end together: the
engine's coalescer sends the first alone and the others in one shared call.

Compare two trees by running it in each, back to back (the machine is shared: read the
per-round figures). ``--callgrind`` instead runs ``redis-server`` (from PATH) under
valgrind's callgrind and counts the machine instructions Redis executes while the items
are finished (a warm-up round first): a count, not a time, so it is the same whatever else
the machine does, and two trees compare exactly (per engine call, from the same bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.store import RedisStore
from mageflow.testing.redis_server import redis_server

STREAM = "bench-engine"
TEMPLATE = ['{"id":', "id", ',"task":', "task", ',"payload":', "payload", ',"key":', "key", "}"]
DELIVERY = json.dumps(
    {"f": "data", "m": None, "s": STREAM, "r": STREAM + ".", "d": TEMPLATE, "q": TEMPLATE}
)


async def cpu_and_stats(client: aioredis.Redis) -> tuple[float, dict[str, tuple[int, int]]]:
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    calls = {
        k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()
    }
    # a script call is EVALSHA, or FCALL where the server runs the engine as a function
    calls["script"] = tuple(  # type: ignore[assignment]
        sum(calls.get(k, (0, 0))[i] for k in ("evalsha", "fcall")) for i in (0, 1)
    )
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


def noop_app(store: RedisStore) -> Mageflow:
    """An app on ``store`` with the no-op task, the engine appending each dispatched
    message to STREAM (stream delivery; no task manager, no worker)."""
    app = Mageflow(backend=LocalBackend(workers=1), store=store)

    @app.task("noop")
    async def noop(msg: dict[str, Any]) -> int:
        return 1

    app.engine.delivery = DELIVERY
    return app


async def one_round(
    app: Mageflow,
    client: aioredis.Redis,
    items: int,
    cap: int,
    created: Callable[[], Awaitable[None]] | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """Build a swarm of ``items`` no-op items, run it and finish every item as a first
    delivery, ``batch`` at a time; ``created`` is awaited once the swarm is stored, before
    it runs."""
    swarm = await app.swarm_of(
        "noop",
        [{"i": i} for i in range(items)],
        config=SwarmConfig(max_concurrency=cap),
        is_swarm_closed=True,
    )
    if created is not None:
        await created()
    await client.delete(STREAM)
    cpu0, stats0 = await cpu_and_stats(client)
    started = time.perf_counter()
    await app.engine.run(swarm.key, None)
    _, after_run = await cpu_and_stats(client)
    before_last = after_run
    done = 0
    last_id = "0"
    while done < items:
        reply: Any = await client.xread({STREAM: last_id}, count=500, block=1000)
        if not reply:
            raise RuntimeError(f"stalled after {done} of {items} items")
        entries = reply[0][1]
        for at in range(0, len(entries), batch):
            msgs = [json.loads(fields[b"data"]) for _, fields in entries[at : at + batch]]
            last_id = entries[at + len(msgs) - 1][0]
            if done + len(msgs) == items:
                _, before_last = await cpu_and_stats(client)
            # finished together, as a worker's concurrent tasks: the engine's coalescer
            # sends the first alone and those that wait for it in one call
            await asyncio.gather(
                *(app.engine.finish(m["key"], True, "1", first_run=m["id"]) for m in msgs)
            )
            done += len(msgs)
    elapsed = time.perf_counter() - started
    cpu1, stats1 = await cpu_and_stats(client)
    used = {
        k: (v[0] - stats0.get(k, (0, 0))[0], v[1] - stats0.get(k, (0, 0))[1])
        for k, v in stats1.items()
    }
    return {
        "cpu_us": (cpu1 - cpu0) * 1e6 / items,
        "script_us": used["script"][1] / items,
        "wall_us": elapsed * 1e6 / items,
        "calls": {k: c / items for k, (c, _) in used.items() if c and k != "script"},
        "usec": {k: u / items for k, (_, u) in used.items() if u and k != "script"},
        "run_us": after_run["script"][1] - stats0["script"][1],
        "finish_us": (before_last["script"][1] - after_run["script"][1]) / (items - 1),
        "last_us": stats1["script"][1] - before_last["script"][1],
    }


def _under_callgrind(out: str) -> tuple[subprocess.Popen[bytes], int]:
    """``redis-server`` from PATH under callgrind, counting nothing until told to."""
    valgrind, server = shutil.which("valgrind"), shutil.which("redis-server")
    if valgrind is None or server is None:
        raise SystemExit("--callgrind needs valgrind and redis-server on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, port


async def callgrind_server(out: str) -> tuple[subprocess.Popen[bytes], str, aioredis.Redis]:
    """A ``redis-server`` under callgrind (see _under_callgrind), once it answers: the
    process, its URL and a client."""
    proc, port = _under_callgrind(out)
    url = f"redis://127.0.0.1:{port}"
    client = aioredis.Redis.from_url(url)
    for _ in range(300):
        try:
            await client.ping()
            break
        except (ConnectionError, OSError, aioredis.RedisError):
            await asyncio.sleep(0.1)
    return proc, url, client


def _counting(pid: int, on: bool) -> None:
    state = "on" if on else "off"
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def _total(out: str) -> int:
    ann = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True).stdout
    found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", ann)
    if found is None:
        raise SystemExit(f"no totals in callgrind's output {out}")
    return int(found.group(1).replace(",", ""))


async def instructions(items: int, cap: int, batch: int) -> None:
    """Machine instructions per engine call, counted by callgrind in the server (its
    timer work included: a slower run counts a little more of it)."""
    out = os.path.join(tempfile.mkdtemp(prefix="engine-cost-"), "callgrind.out")
    proc, url, client = await callgrind_server(out)
    store = RedisStore(url)
    app = noop_app(store)
    await one_round(app, client, 200, cap, batch=batch)  # loads the engine, warms the caches
    before: dict[str, tuple[int, int]] = {}

    async def count() -> None:  # from the run on: building the swarm is not counted
        nonlocal before
        _, before = await cpu_and_stats(client)
        await asyncio.to_thread(_counting, proc.pid, True)

    await one_round(app, client, items, cap, count, batch)
    await asyncio.to_thread(_counting, proc.pid, False)
    _, after = await cpu_and_stats(client)
    await client.shutdown(nosave=True)
    await client.aclose()
    await store.close()
    await asyncio.to_thread(proc.wait)
    total = await asyncio.to_thread(_total, out)
    calls = after["script"][0] - before["script"][0]
    print(
        f"{total / items:,.0f} instructions per item, {total / calls:,.0f} per engine call "
        f"({calls} calls, {items} items, cap {cap}, batch {batch}; from the run on, the "
        "server's commands between the calls included: XREAD, INFO)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--cap", type=int, default=100)
    parser.add_argument(
        "--batch", type=int, default=1, help="finish this many items at once (a shared call)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--eval", action="store_true", help="EVALSHA even where the server runs functions"
    )
    parser.add_argument(
        "--aof", action="store_true", help="appendonly yes, fsync every second (production)"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under valgrind instead"
    )
    opts = parser.parse_args()
    if opts.callgrind:
        await instructions(opts.items, opts.cap, opts.batch)
        return
    extra = ["--appendonly", "yes", "--appendfsync", "everysec"] if opts.aof else []
    with redis_server(extra_args=extra) as server:
        store = RedisStore(server.url)
        if opts.eval:
            store._functions = False
        app = noop_app(store)
        client = aioredis.Redis.from_url(server.url)
        rounds = [
            await one_round(app, client, opts.items, opts.cap, batch=opts.batch)
            for _ in range(opts.repeat)
        ]
        for i, r in enumerate(rounds, 1):
            print(
                f"round {i}: Redis CPU {r['cpu_us']:.1f} us/item, script {r['script_us']:.1f} "
                f"us/item, wall {r['wall_us']:.1f} us/item"
            )
        med = {k: statistics.median(r[k] for r in rounds) for k in ("cpu_us", "script_us")}
        print(
            f"median of {opts.repeat}: Redis CPU {med['cpu_us']:.1f} us/item, "
            f"script {med['script_us']:.1f} us/item ({opts.items} items, cap {opts.cap})"
        )
        calls = sorted(rounds[-1]["calls"].items(), key=lambda kv: -kv[1])
        print("commands per item: " + ", ".join(f"{k} {v:.2f}" for k, v in calls))
        for i, r in enumerate(rounds, 1):
            print(
                f"round {i}: the run call {r['run_us']} us, a finish {r['finish_us']:.1f} us, "
                f"the last finish (the swarm completes) {r['last_us']} us"
            )
        usec = sorted(rounds[-1]["usec"].items(), key=lambda kv: -kv[1])
        print("usec per item, by command: " + ", ".join(f"{k} {v:.1f}" for k, v in usec))
        await client.aclose()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
