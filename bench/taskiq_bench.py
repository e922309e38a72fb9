"""Benchmark: MageFlow on taskiq against raw taskiq, measured in the same run (not a test).

    python bench/taskiq_bench.py [--tasks 2000] [--hops 200] [--items 2000] [--steps 200]
                                 [--repeat 5] [--concurrency 200]
                                 [--profile | --py-spy PATH] [--only raw|mageflow]

Starts three throwaway Redis servers — the broker's (a taskiq-redis stream), MageFlow's
store, and one on which tasks signal completion to this script — and ONE worker process,
``mageflow worker taskiq_bench_app:mf`` (bench/taskiq_bench_app.py), serving both the raw
taskiq tasks and the MageFlow tasks on the same broker. Then, ``--repeat`` times:

- raw taskiq throughput: ``--tasks`` no-op tasks kicked (16 kicks in flight, as the
  adapter publishes) until the worker ran the last one (it counts in-process and pushes
  once; this script BLPOPs: no polling, no result backend);
- raw taskiq hop: ``--hops`` sequential round trips, kick a task and BLPOP the list it
  RPUSHes to;
- raw taskiq relay (not in the targets; the same work pattern as MageFlow's): ``--items``
  no-op tasks, 100 at once, each finished one kicking the next *from the worker*, as a
  swarm refills a slot; and a ``--steps`` chain of tasks each kicking the next;
- MageFlow swarm: ``--items`` no-op items under ``max_concurrency=100``, from creating the
  swarm until its success callback ran (it RPUSHes; this script BLPOPs);
- MageFlow chain: ``--steps`` no-op steps; each step notes when it started, in the worker
  (no Redis command), and the chain's success callback reports the times.

Figures are medians over the repeats. Commands per unit come from ``INFO commandstats``
deltas of the broker's server (the broker's share) and of the store's server (MageFlow's
share); "round trips" counts the commands a client sends (EVALSHA, not the commands the
Lua transitions run inside Redis). After the timed rounds, one untimed run of 200 raw
tasks and one swarm of 200 are watched with MONITOR, which tells the commands clients
sent (the round trips) from those a script ran. Worker CPU is read from /proc.
``--profile`` runs the worker under cProfile, ``--py-spy /path/to/py-spy`` samples it
with py-spy and prints where its time goes; ``--only`` runs one side, to profile it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
APP = "taskiq_bench_app"
SWARM_CAP = 100
PUBLISH_CONCURRENCY = 16  # as mageflow_taskiq.backend publishes

# Commands a client sends to the store, and which the Lua transitions never run: the rest
# of a store delta ran inside EVALSHA (as in bench/core_roundtrips.py).
STORE_CLIENT_COMMANDS = {
    "evalsha", "eval", "fcall", "hmget", "hsetnx", "subscribe", "unsubscribe", "ping", "multi",
    "exec", "script|load", "script", "hgetall", "zadd", "zrem", "type",
}  # fmt: skip
# A MageFlow client's round trip to the store, never run inside a script (MULTI..EXEC
# counts once).
ROUND_TRIP_COMMANDS = {"evalsha", "eval", "fcall", "multi", "hgetall", "hsetnx", "ping"}
# Commands the broker's client sends (the stream broker runs one small Lua script, to
# renew its claims, every idle_timeout / 3: 20 s by default, i.e. not during a run here).
BROKER_SCRIPT_COMMANDS = {"xpending", "xclaim"}


def _ensure_importable() -> None:
    try:
        import mageflow  # noqa: F401
        import mageflow_taskiq  # noqa: F401
    except ImportError:  # run from a checkout without the packages installed
        sys.path[:0] = [
            str(ROOT / "packages/mageflow-core/src"),
            str(ROOT / "packages/mageflow-taskiq/src"),
        ]


_ensure_importable()


def _pythonpath() -> str:
    """For the worker: this directory, the packages this script imports, PYTHONPATH."""
    import mageflow
    import mageflow_taskiq

    parts = [str(BENCH_DIR)]
    parts += [str(Path(m.__file__ or "").resolve().parents[1]) for m in (mageflow, mageflow_taskiq)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


from mageflow import SwarmConfig  # noqa: E402
from mageflow.testing.redis_server import RedisServer, redis_server  # noqa: E402


# -- measuring -------------------------------------------------------------------------------
async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


@dataclass
class Usage:
    seconds: float
    broker: dict[str, int]
    store: dict[str, int]
    worker_cpu: float
    broker_cpu: float
    store_cpu: float


@dataclass
class Meter:
    broker: aioredis.Redis
    store: aioredis.Redis
    worker_pid: int

    shared: bool = False
    """Broker and store are one server: everything is counted as the broker's."""

    async def measure(self, run: Callable[[], Awaitable[Any]]) -> tuple[Any, Usage]:
        # INFO itself is counted; subtract the one each snapshot adds to the next.
        b0, s0 = await commandstats(self.broker), await commandstats(self.store)
        bc0, sc0 = await redis_cpu(self.broker), await redis_cpu(self.store)
        w0 = process_cpu(self.worker_pid)
        started = time.perf_counter()
        value = await run()
        seconds = time.perf_counter() - started
        w1 = process_cpu(self.worker_pid)
        bc1, sc1 = await redis_cpu(self.broker), await redis_cpu(self.store)
        b1, s1 = await commandstats(self.broker), await commandstats(self.store)
        used_b, used_s = delta(b0, b1), delta(s0, s1)
        for used in (used_b, used_s):
            used["info"] = used.get("info", 0) - 3  # the cpu + commandstats snapshots
            if used["info"] <= 0:
                del used["info"]
        if self.shared:
            used_s, sc1, sc0 = {}, 0.0, 0.0
        return value, Usage(seconds, used_b, used_s, w1 - w0, bc1 - bc0, sc1 - sc0)


@dataclass
class Results:
    values: dict[str, list[float]] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    sent: dict[str, tuple[dict[str, int], int]] = field(default_factory=dict)
    """Per workload: the commands clients (not scripts) sent to the broker's server in
    one untimed run under MONITOR, and that run's units."""

    def add(self, name: str, value: float, usage: Usage) -> None:
        self.values.setdefault(name, []).append(value)
        self.usage[name] = usage  # the last repeat's counts (they do not vary)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])


# -- the four measurements -------------------------------------------------------------------
class Bench:
    def __init__(self, app: ModuleType, meter: Meter, sig: aioredis.Redis, args: Any) -> None:
        self.app = app
        self.mf = app.mf
        self.meter = meter
        self.sig = sig
        self.args = args

    async def pop(self, key: str, timeout: float = 300) -> bytes:
        got = await self.sig.blpop([key], timeout=timeout)
        if got is None:
            raise TimeoutError(f"nothing on {key} after {timeout} s; see the worker log")
        value = got[1]
        return value.encode() if isinstance(value, str) else value

    async def sent_by_clients(self, url: str, run: Callable[[], Awaitable[Any]]) -> dict[str, int]:
        """The commands clients sent to the server at ``url`` while ``run`` ran, by name:
        MONITOR shows a command a script ran with the client type ``lua``, left out here
        (``INFO commandstats`` counts both alike). Untimed: MONITOR slows the server."""
        client = aioredis.Redis.from_url(url, decode_responses=True)
        seen: dict[str, int] = {}
        started = asyncio.Event()

        async def watch() -> None:
            async with client.monitor() as monitor:
                started.set()
                while True:
                    command = await monitor.next_command()
                    words = str(command.get("command", "")).split()
                    if words and command.get("client_type") != "lua":
                        name = words[0].lower()
                        seen[name] = seen.get(name, 0) + 1

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(started.wait(), 10)
            await run()
            await asyncio.sleep(0.5)  # the last acknowledgements, sent after the signal
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            await client.aclose()
        for ours in ("info", "monitor"):  # the meter's snapshots, this watch
            seen.pop(ours, None)
        return seen

    async def raw_throughput(self, n: int) -> tuple[float, Usage]:
        batch = uuid.uuid4().hex
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def kick() -> None:
            async with limit:
                await self.app.raw_noop.kiq(batch, n)

        async def run() -> None:
            await asyncio.gather(*(kick() for _ in range(n)))
            await self.pop(f"bench:{batch}")

        _, usage = await self.meter.measure(run)
        return n / usage.seconds, usage

    async def raw_hops(self, n: int) -> tuple[list[float], Usage]:
        reply = f"bench:hop:{uuid.uuid4().hex}"

        async def run() -> list[float]:
            times = []
            for _ in range(n):
                started = time.perf_counter()
                await self.app.raw_hop.kiq(reply)
                await self.pop(reply)
                times.append(time.perf_counter() - started)
            return times

        return await self.meter.measure(run)

    async def raw_relay(self, n: int, width: int) -> tuple[float, Usage]:
        batch = uuid.uuid4().hex
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def kick() -> None:
            async with limit:
                await self.app.raw_relay.kiq(batch, n, width)

        async def run() -> None:
            await asyncio.gather(*(kick() for _ in range(width)))
            await self.pop(f"bench:{batch}")

        _, usage = await self.meter.measure(run)
        return n / usage.seconds, usage

    async def raw_relay_chain(self, n: int) -> tuple[float, Usage]:
        batch = uuid.uuid4().hex

        async def run() -> list[float]:
            await self.app.raw_relay_chain.kiq(batch, n)
            times: list[float] = json.loads(await self.pop(f"bench:{batch}"))
            return times

        times, usage = await self.meter.measure(run)
        assert len(times) == n
        return statistics.median(b - a for a, b in itertools.pairwise(times)), usage

    async def swarm(self, n: int) -> tuple[float, Usage]:
        reply = f"bench:swarm:{uuid.uuid4().hex}"

        async def run() -> dict[str, Any]:
            done = await self.mf.sign("bench.report", reply=reply)
            sw = await self.mf.swarm(
                ["bench.noop"] * n,
                success_callbacks=[done],
                config=SwarmConfig(max_concurrency=SWARM_CAP),
                is_swarm_closed=True,
            )
            await sw.aio_run_no_wait({})
            body: dict[str, Any] = json.loads(await self.pop(reply))
            return body

        body, usage = await self.meter.measure(run)
        assert body["results"] == n, body
        return n / usage.seconds, usage

    async def chain(self, n: int) -> tuple[float, float, Usage]:
        reply = f"bench:chain:{uuid.uuid4().hex}"
        done = await self.mf.sign("bench.report", reply=reply)
        wf = await self.mf.chain(["bench.step"] * n, success=done)

        async def run() -> dict[str, Any]:
            await wf.aio_run_no_wait({})
            body: dict[str, Any] = json.loads(await self.pop(reply))
            return body

        body, usage = await self.meter.measure(run)
        times = body["step_times"]
        assert len(times) == n, f"{len(times)} step times for {n} steps"
        per_step = [b - a for a, b in itertools.pairwise(times)]
        return statistics.median(per_step), usage.seconds / n, usage


# -- the worker process ----------------------------------------------------------------------
@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    pid: int = 0
    """The worker's own pid (it announces it): under py-spy, ``proc`` is py-spy."""


@contextlib.contextmanager
def worker_process(
    env: dict[str, str], args: Any, log: Path, profile: Path | None, spy: Path | None
) -> Iterator[WorkerProc]:
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "mageflow", "worker", f"{APP}:mf", "--concurrency", str(args.concurrency)]
    if spy is not None:
        cmd = [
            args.py_spy,
            "record",
            "--format",
            "raw",
            "--rate",
            "250",
            "-o",
            str(spy),
            "--",
            *cmd,
        ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=BENCH_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    worker = WorkerProc(proc)
    try:
        yield worker
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid or proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- report ---------------------------------------------------------------------------------
def split(used: dict[str, int], client_only: set[str] | None, script: set[str]) -> tuple[int, int]:
    """(round trips, all commands incl. in-script)."""
    total = sum(used.values())
    if client_only is not None:
        return sum(v for k, v in used.items() if k in client_only), total
    return total - sum(v for k, v in used.items() if k in script), total


def report(r: Results, args: Any, servers: dict[str, RedisServer]) -> None:
    rows = [
        ("raw taskiq", f"{args.tasks} no-op tasks", "raw_tps", args.tasks, "{:,.0f} tasks/s", 1),
        ("raw taskiq", f"{args.hops} sequential hops", "raw_hop", args.hops, "{:.3f} ms/hop", 1000),
        ("raw relay", f"{args.items}, {SWARM_CAP} at once", "raw_relay", args.items,
         "{:,.0f} tasks/s", 1),
        ("raw relay", f"chain of {args.steps} steps", "raw_relay_step", args.steps,
         "{:.3f} ms/step", 1000),
        ("mageflow", f"swarm of {args.items} (cap {SWARM_CAP})", "swarm_ips", args.items,
         "{:,.0f} items/s", 1),
        ("mageflow", f"chain of {args.steps} steps", "chain_step", args.steps, "{:.3f} ms/step",
         1000),
    ]  # fmt: skip
    print()
    layout = (
        "x2: broker = store (one database), signal" if args.shared else "x3: broker, store, signal"
    )
    print(
        f"redis {servers['broker'].version} ({servers['broker'].strategy}) {layout}"
        f"; one worker process, --concurrency {args.concurrency}; "
        f"median of {args.repeat} run(s)"
    )
    head = (
        f"{'':<11}{'workload':<26}{'result':>16} | {'broker cmds':>11} | {'store (mageflow)':>18}"
        f" | {'worker CPU':>10} | {'redis CPU':>13}"
    )
    print(head)
    print(
        f"{'':<11}{'':<26}{'':>16} | {'per unit':>11} | {'round trips / all':>18}"
        f" | {'ms/unit':>10} | {'ms/unit b / s':>13}"
    )
    print("-" * len(head))
    for who, what, key, units, shape, scale in rows:
        if key not in r.values:
            continue
        u = r.usage[key]
        b_rt, _ = split(u.broker, None, BROKER_SCRIPT_COMMANDS)
        s_rt, s_all = split(u.store, STORE_CLIENT_COMMANDS, set())
        store = f"{s_rt / units:.2f} / {s_all / units:.2f}" if s_all else "-"
        value = shape.format(r.median(key) * scale)
        print(
            f"{who:<11}{what:<26}{value:>16} | {b_rt / units:>11.2f} | {store:>18}"
            f" | {u.worker_cpu * 1000 / units:>10.3f}"
            f" | {u.broker_cpu * 1000 / units:>6.3f}/{u.store_cpu * 1000 / units:<6.3f}"
        )
    print("-" * len(head))
    if "raw_tps" in r.values and "swarm_ips" in r.values:
        tput_ratio = r.median("swarm_ips") / r.median("raw_tps")
        hop_ratio = r.median("chain_step") / r.median("raw_hop")
        print(
            f"swarm items/s / raw tasks/s  = {tput_ratio:.3f}   (target >= 0.85) "
            f"{'OK' if tput_ratio >= 0.85 else 'MISSED'}"
        )
        print(
            f"chain ms/step / raw ms/hop   = {hop_ratio:.3f}   (target <= 1.0) "
            f"{'OK' if hop_ratio <= 1.0 else 'MISSED'}"
        )
        raw_w = r.usage["raw_tps"].worker_cpu / args.tasks
        mf_w = r.usage["swarm_ips"].worker_cpu / args.items
        print(
            f"worker CPU per item / per raw task = {mf_w / raw_w:.3f}   (target <= 1.2) "
            f"{'OK' if mf_w <= 1.2 * raw_w else 'MISSED'}"
        )
        used = r.usage["swarm_ips"]
        both = [used.store] if not args.shared else [used.broker]
        trips = sum(v for u in both for k, v in u.items() if k in ROUND_TRIP_COMMANDS)
        print(
            f"store round trips per swarm item = {trips / args.items:.2f}   (target <= 1) "
            f"{'OK' if trips <= args.items * 1.05 else 'MISSED'}"
        )
    if args.shared and "raw_tps" in r.values and "swarm_ips" in r.values:
        raw_cpu = r.usage["raw_tps"].broker_cpu / args.tasks
        mf_cpu = r.usage["swarm_ips"].broker_cpu / args.items
        print(
            f"one Redis for broker and store: its CPU per swarm item {mf_cpu * 1000:.3f} ms, "
            f"per raw task {raw_cpu * 1000:.3f} ms; MageFlow's share "
            f"{(mf_cpu - raw_cpu) * 1000:.3f} ms vs the broker's own {raw_cpu * 1000:.3f} ms "
            f"(target <=) {'OK' if mf_cpu - raw_cpu <= raw_cpu else 'MISSED'}"
        )
    if "raw_relay" in r.values and "swarm_ips" in r.values:
        print(
            "same pattern in raw taskiq (the worker publishes what comes next): "
            f"swarm / relay = {r.median('swarm_ips') / r.median('raw_relay'):.3f}, "
            f"chain step / relay step = "
            f"{r.median('chain_step') / r.median('raw_relay_step'):.3f}"
        )
    if "raw_tps" in r.values and "swarm_ips" in r.values:
        pairs = zip(r.values["swarm_ips"], r.values["raw_tps"], strict=True)
        print("per round (measured back to back, so noise shared by both cancels out):")
        print("  swarm / raw      " + ", ".join(f"{a / b:.3f}" for a, b in pairs))
        steps = zip(r.values["chain_step"], r.values["raw_hop"], strict=True)
        print("  step / hop       " + ", ".join(f"{a / b:.3f}" for a, b in steps))
    print("all runs:")
    for _, _, key, _, shape, scale in rows:
        if key in r.values:
            print(f"  {key:<16}" + ", ".join(shape.format(v * scale) for v in r.values[key]))
    if "chain_total" in r.values:
        print(
            f"  chain, run to callback / {args.steps}: "
            + ", ".join(f"{v * 1000:.3f} ms/step" for v in r.values["chain_total"])
        )
    print("\ncommands per unit (last run), by server:")
    for _, _, key, units, _, _ in rows:
        if key not in r.usage:
            continue
        u = r.usage[key]
        for server, used in (("broker", u.broker), ("store", u.store)):
            if used:
                parts = ", ".join(
                    f"{k} {v / units:.2f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1])
                )
                print(f"  {key:<16}{server:<7} {parts}")
    if r.sent:
        print("commands clients sent to the broker's server per unit (MONITOR, one untimed")
        print("run; commands a script ran left out, the publisher's own included):")
    for key, (sent, units) in r.sent.items():
        parts = ", ".join(
            f"{k} {v / units:.2f}" for k, v in sorted(sent.items(), key=lambda kv: -kv[1])
        )
        print(f"  {key:<16}{parts}")


def print_profile(path: Path, top: int = 30) -> None:
    if not path.exists():
        print(f"\nno profile written to {path}")
        return
    print(f"\nworker profile ({path}), top {top} by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


CATEGORIES = [
    ("startup (imports)", ("_find_and_load",)),
    ("MageFlow store transitions (EVALSHA)", ("RedisStore._transition",)),
    ("publish: taskiq kick (XADD)", ("AsyncKicker.kiq",)),
    ("acknowledge (XACK)", ("_ack_generator",)),
    ("broker read (XREADGROUP/XAUTOCLAIM)", ("ReclaimingStreamBroker.listen",)),
    ("MageFlow wrapper (JSON, merge, hooks)", ("run_task (tasks.py)",)),
    ("raw task bodies", ("raw_noop", "raw_hop")),
    ("waiting for I/O (epoll)", ("EpollSelector.select",)),
]


def print_py_spy(path: Path, top: int = 40) -> None:
    """Share of the worker's samples spent in (inclusive) and directly in (self) each
    function, from py-spy's collapsed stacks."""
    if not path.exists():
        print(f"\nno py-spy output at {path}")
        return
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    categories: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]  # fmt: skip
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        label = next(
            (lb for lb, marks in CATEGORIES if any(m in f for m in marks for f in frames)),
            "other (taskiq receiver, asyncio, logging)",
        )
        categories[label] = categories.get(label, 0) + n
    print(f"\npy-spy ({path}): {total} samples of the worker's threads")
    print("where the worker's time goes (each sample counted under its first match):")
    for label, n in sorted(categories.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * n / total:5.1f}%  {label}")
    print(f"top {top} functions by inclusive share:")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print(f"top {top // 2} by own share:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[: top // 2]:
        print(f"  {100 * n / total:5.1f}%  {frame}")


# -- main -----------------------------------------------------------------------------------
async def run(args: Any, urls: dict[str, str], worker: WorkerProc) -> Results:
    import taskiq_bench_app as app  # configured from the environment set in main()

    # BLPOP waits longer than redis-py 8's default 5 s socket timeout
    sig = aioredis.Redis.from_url(urls["signal"], socket_timeout=None)
    broker_r, store_r = (aioredis.Redis.from_url(urls[k]) for k in ("broker", "store"))
    ready = await sig.blpop(["bench:ready"], timeout=60)
    if ready is None:
        raise RuntimeError("the worker did not start in 60 s")
    worker.pid = int(ready[1])
    await app.broker.startup()
    bench = Bench(app, Meter(broker_r, store_r, worker.pid, args.shared), sig, args)
    # warm up: connections, the store's script, taskiq's and pydantic's caches
    await bench.raw_throughput(args.tasks)
    await bench.raw_hops(20)
    await bench.swarm(500)
    await bench.chain(20)
    await bench.raw_relay(500, SWARM_CAP)
    await bench.raw_relay_chain(20)
    results = Results()
    raw, mageflow = args.only in (None, "raw"), args.only in (None, "mageflow")
    for i in range(args.repeat):
        # the pairs of each ratio run back to back: raw, swarm, hop, step, relays
        line = []
        if raw:
            tps, u = await bench.raw_throughput(args.tasks)
            results.add("raw_tps", tps, u)
            line.append(f"raw {tps:,.0f} tasks/s")
        if mageflow:
            ips, u = await bench.swarm(args.items)
            results.add("swarm_ips", ips, u)
            line.append(f"swarm {ips:,.0f} items/s")
        if raw:
            hops, u = await bench.raw_hops(args.hops)
            results.add("raw_hop", statistics.median(hops), u)
            line.append(f"hop {statistics.median(hops) * 1000:.3f} ms")
        if mageflow:
            step, step_total, u = await bench.chain(args.steps)
            results.add("chain_step", step, u)
            results.values.setdefault("chain_total", []).append(step_total)
            line.append(f"step {step * 1000:.3f} ms")
        if raw:
            rps, u = await bench.raw_relay(args.items, SWARM_CAP)
            results.add("raw_relay", rps, u)
            line.append(f"relay {rps:,.0f} tasks/s")
            rstep, u = await bench.raw_relay_chain(args.steps)
            results.add("raw_relay_step", rstep, u)
            line.append(f"relay step {rstep * 1000:.3f} ms")
        print(f"run {i + 1}: {', '.join(line)}", flush=True)
    watched = 200
    if raw:
        results.sent["raw_tps"] = (
            await bench.sent_by_clients(urls["broker"], lambda: bench.raw_throughput(watched)),
            watched,
        )
    if mageflow:
        results.sent["swarm_ips"] = (
            await bench.sent_by_clients(urls["broker"], lambda: bench.swarm(watched)),
            watched,
        )
    await app.broker.shutdown()
    await app.mf.aclose()
    for client in (sig, broker_r, store_r):
        await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=200, help="worker async slots")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker")
    parser.add_argument(
        "--py-spy", metavar="PY_SPY", help="sample the worker with this py-spy binary"
    )
    parser.add_argument(
        "--only", choices=["raw", "mageflow"], help="run one side only (for profiling)"
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="store and broker on one Redis database: the engine appends messages itself",
    )
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        names = ("broker", "signal") if args.shared else ("broker", "store", "signal")
        servers = {name: stack.enter_context(redis_server()) for name in names}
        if args.shared:  # the store in the broker's database: stream delivery
            servers["store"] = servers["broker"]
        urls = {name: s.url for name, s in servers.items()}
        tag = uuid.uuid4().hex[:8]
        env = {
            "MAGEFLOW_BACKEND": "taskiq",
            "MAGEFLOW_TASKIQ_URL": urls["broker"],
            "MAGEFLOW_TASKIQ_QUEUE": f"bench-{tag}",
            "MAGEFLOW_REDIS_URL": urls["store"],
            "MAGEFLOW_KEY_PREFIX": f"bench-{tag}",
            "BENCH_SIGNAL_URL": urls["signal"],
        }
        for name in (
            "MAGEFLOW_TASKIQ_BROKER",
            "MAGEFLOW_TASKIQ_IDLE_TIMEOUT",
            "MAGEFLOW_FAULT_DIR",
        ):
            os.environ.pop(name, None)
        os.environ.update(env)
        sys.path.insert(0, str(BENCH_DIR))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskiq-bench-")))
        profile = None
        if args.profile:  # kept after the run, for a closer look with pstats
            profile = Path(tempfile.mkdtemp(prefix="taskiq-bench-profile-")) / "worker.prof"
        worker_env = {**os.environ, "PYTHONPATH": _pythonpath()}
        spy = None
        if args.py_spy:
            spy = Path(tempfile.mkdtemp(prefix="taskiq-bench-py-spy-")) / "worker.txt"
        log = tmp / "worker.log"
        try:
            with worker_process(worker_env, args, log, profile, spy) as worker:
                results = asyncio.run(run(args, urls, worker))
        except BaseException:
            print(f"worker log:\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            raise
        report(results, args, servers)
        if profile is not None:
            print_profile(profile)
        if spy is not None:
            print_py_spy(spy)


if __name__ == "__main__":
    main()
