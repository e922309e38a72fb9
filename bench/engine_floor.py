"""Engine benchmark: what a swarm item's finish costs Redis, against the same commands
sent without the script's logic and against a raw broker task (not a test; prints figures).

    python bench/engine_floor.py [--items 3000] [--cap 100]
    python bench/engine_floor.py --callgrind [--items 300]

Three measurements on one Redis server, in one run (the engine's round as in
``bench/engine_cost.py``: stream delivery, each item finished as a first delivery, one
engine call per item):

- engine: the round, per item;
- commands alone: the commands those engine calls ran inside Redis, recorded with MONITOR
  during an untimed round and sent again, call by call, each call's commands as one
  MULTI/EXEC, on the same keys restored to their state before that round (the same work
  for Redis's data structures, none of the script's logic);
- raw broker task: what a task of a taskiq-redis stream costs its broker: XADD, then
  XREADGROUP (32 at a time), XACK and XDEL, each sent by a client.

So ``engine - commands alone`` is what the script's logic costs, and ``commands alone``
is a floor for any engine that keeps the same per-item state. Default: Redis CPU
(``used_cpu_user + used_cpu_sys``) per unit; ``--callgrind``: machine instructions per
unit, counted by callgrind in ``redis-server`` (from PATH): a count, not a time (the
kernel's share of a round trip is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import engine_cost as ec  # bench/ is the script's own directory: on sys.path
import redis.asyncio as aioredis

from mageflow.store import RedisStore
from mageflow.testing.redis_server import redis_server

ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
RAW_TASK = (
    b'{"task_id":"5c1c0b8e2a1e4f5c9d0f8f7b6a5e4d3c","task_name":"bench:noop","labels":{},'
    b'"labels_types":{},"args":[],"kwargs":{"i":8}}'
)
KICKS_IN_FLIGHT = 16  # as mageflow_taskiq publishes


def _unescape(arg: bytes) -> bytes:
    """An argument as MONITOR quotes it (Redis's sdscatrepr), back to its bytes."""

    def one(m: re.Match[bytes]) -> bytes:
        e = m.group(1)
        if e.startswith(b"x") and len(e) == 3:
            return bytes([int(e[1:], 16)])
        return ESCAPES.get(e, e)

    return ESCAPE.sub(one, arg)


def parse_monitor_line(line: bytes) -> tuple[str, list[bytes]]:
    """``(client, args)`` of one MONITOR line; client is ``lua`` for a script's command."""
    head, _, rest = line.partition(b"] ")
    client = head.rsplit(b" ", 1)[-1].decode()
    return client, [_unescape(a) for a in ARG.findall(rest)]


class Recorder:
    """The commands each engine call ran, from MONITOR: one list per call, in order."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.calls: list[list[list[bytes]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _read(self, ready: asyncio.Event) -> None:
        async with self.client.monitor() as monitor:
            conn = monitor.connection
            assert conn is not None
            ready.set()
            while True:
                line = await conn.read_response(disable_decoding=True)
                client, args = parse_monitor_line(line)
                if client != "lua":
                    name = args[0].upper() if args else b""
                    if name in (b"FCALL", b"EVALSHA"):
                        self.calls.append([])
                    elif name == b"ECHO" and args[1:] == [b"engine-floor-end"]:
                        return
                elif self.calls:
                    self.calls[-1].append(args)

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._read(ready))
        await ready.wait()

    async def stop(self) -> None:
        await self.client.echo("engine-floor-end")
        assert self._task is not None
        await self._task


async def snapshot(client: aioredis.Redis) -> list[tuple[bytes, int, bytes]]:
    """Every key with its TTL (ms, 0: none) and DUMP."""
    out = []
    async for key in client.scan_iter(count=1000):
        dumped = await client.dump(key)
        if dumped is not None:
            out.append((key, max(0, await client.pttl(key)), dumped))
    return out


async def restore(client: aioredis.Redis, keys: list[tuple[bytes, int, bytes]]) -> None:
    await client.flushdb()
    for key, ttl, dumped in keys:
        await client.restore(key, ttl, dumped)


class Meter:
    """Redis's cost over a stretch: CPU seconds, or instructions under callgrind (each
    stretch dumped to its own file, ``<out>.<n>``)."""

    def __init__(self, client: aioredis.Redis, pid: int | None = None, out: str = "") -> None:
        self.client, self.pid, self.out = client, pid, out
        self.parts: list[float] = []

    async def _cpu(self) -> float:
        return (await ec.cpu_and_stats(self.client))[0]

    async def start(self) -> None:
        if self.pid is None:
            self.parts.append(-(await self._cpu()))
        else:
            await asyncio.to_thread(ec._counting, self.pid, True)

    async def stop(self) -> None:
        if self.pid is None:
            self.parts[-1] += await self._cpu()
            return
        await asyncio.to_thread(ec._counting, self.pid, False)
        await asyncio.to_thread(
            subprocess.run, ["callgrind_control", "-d", str(self.pid)], check=True,
            capture_output=True,
        )  # fmt: skip
        n = len(self.parts) + 1
        self.parts.append(float(await asyncio.to_thread(ec._total, f"{self.out}.{n}")))

    async def measure(self, work: Awaitable[None]) -> None:
        await self.start()
        await work
        await self.stop()


async def replay(client: aioredis.Redis, calls: list[list[list[bytes]]]) -> None:
    """Each recorded engine call's commands as one MULTI/EXEC."""
    for commands in calls:
        async with client.pipeline(transaction=True) as pipe:
            for args in commands:
                pipe.execute_command(*args)
            await pipe.execute(raise_on_error=False)


async def raw_tasks(client: aioredis.Redis, n: int) -> None:
    """n tasks of a taskiq-redis stream: kicked, read 32 at a time, acknowledged, deleted."""
    stream, group = "bench-floor-raw", "workers"
    for at in range(0, n, KICKS_IN_FLIGHT):
        kicks = min(KICKS_IN_FLIGHT, n - at)
        await asyncio.gather(*(client.xadd(stream, {"data": RAW_TASK}) for _ in range(kicks)))
    done = 0
    while done < n:
        reply: Any = await client.xreadgroup(group, "w", {stream: ">"}, count=32)
        for _, entries in reply:
            for entry_id, _ in entries:
                await client.xack(stream, group, entry_id)
                await client.xdel(stream, entry_id)
                done += 1


async def run(url: str, items: int, cap: int, meter: Meter) -> list[float]:
    client = aioredis.Redis.from_url(url)
    store = RedisStore(url)
    app = ec.noop_app(store)
    await ec.one_round(app, client, 50, cap)  # loads the engine, warms the caches
    recorder = Recorder(aioredis.Redis.from_url(url))
    state: list[tuple[bytes, int, bytes]] = []

    async def record() -> None:
        state.extend(await snapshot(client))
        await recorder.start()

    await ec.one_round(app, client, items, cap, record)
    await recorder.stop()
    n_calls = len(recorder.calls)
    n_commands = sum(len(c) for c in recorder.calls)

    # engine: a fresh swarm of the same shape, measured from its run on
    await ec.one_round(app, client, items, cap, meter.start)
    await meter.stop()
    await restore(client, state)
    await meter.measure(replay(client, recorder.calls))
    await client.xgroup_create("bench-floor-raw", "workers", id="0", mkstream=True)
    await meter.measure(raw_tasks(client, items))
    print(
        f"recorded: {n_calls} engine calls, {n_commands / items:.1f} commands per item run "
        "inside them"
    )
    await client.aclose()
    await store.close()
    return meter.parts


def report(parts: list[float], items: int, unit: str, scale: float) -> None:
    engine, alone, raw = (p * scale / items for p in parts)
    print(f"engine            {engine:12,.1f} {unit} per item")
    print(f"commands alone    {alone:12,.1f} {unit} per item (the same commands, no logic)")
    print(f"raw broker task   {raw:12,.1f} {unit} per task")
    print(
        f"engine / commands alone = {engine / alone:.2f}; the script's logic: "
        f"{(engine - alone) / engine:.0%} of the engine's cost"
    )
    print(f"commands alone / raw broker task = {alone / raw:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="3000 (callgrind: 300)")
    parser.add_argument("--cap", type=int, default=100)
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    opts = parser.parse_args()
    if opts.callgrind:
        items = opts.items or 300
        out = str(Path(tempfile.mkdtemp(prefix="engine-floor-")) / "callgrind.out")
        proc, url, probe = await ec.callgrind_server(out)
        parts = await run(url, items, opts.cap, Meter(probe, proc.pid, out))
        await probe.shutdown(nosave=True)
        await probe.aclose()
        await asyncio.to_thread(proc.wait)
        report(parts, items, "instructions", 1)
        return
    items = opts.items or 3000
    with redis_server() as server:
        probe = aioredis.Redis.from_url(server.url)
        parts = await run(server.url, items, opts.cap, Meter(probe))
        await probe.aclose()
    report(parts, items, "us Redis CPU", 1e6)


if __name__ == "__main__":
    asyncio.run(main())
