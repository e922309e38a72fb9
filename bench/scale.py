"""Scale benchmark: one large swarm of no-op tasks against a 1,000-item one (not a test).

    python bench/scale.py [--items 1000000] [--small 1000] [--configs local,taskiq]
                          [--workers 2] [--cap 1000] [--finished-ttl 20] [--shared]

For each configuration, in one invocation, on throwaway Redis servers:

- (local)  the local backend and a RedisStore, in this process;
- (taskiq) ``--workers`` ``mageflow worker`` processes (bench/taskiq_bench_app.py), the
  broker (a taskiq-redis stream) and the store on separate Redis servers (with ``--shared``
  on one, the fused path: the store's figures then include the broker's work), a third
  server only for the workers to announce themselves.

it builds a swarm with ``swarm_of`` (empty kwargs per item, ``max_concurrency=--cap``,
100 by default: below ``--small``, so the small run refills slots as the big one does, and
is not one burst started by a single call; closed), runs it with ``aio_run`` (the store
pushes the end: no polling) and prints, for ``--small`` items (median of ``--repeat``
runs) and for ``--items``:

- per item: wall time from run to result, the store's Redis CPU (``INFO cpu``), this
  process's and the workers' CPU (/proc); the big run's ratio to the small one (target
  <= 1.2);
- the store's ``used_memory`` minus the empty server's, per item: after building, the
  maximum over samples taken every ``--sample`` s while it runs (the queue full at the
  start), after it finished, and after the finished TTL (``--finished-ttl``) passed; the
  number of keys; what the results take (the items' ``result`` fields and the swarm's
  result list, with the per-field overhead measured on the workflow's hash); target
  <= 200 bytes per item plus results;
- the memory of each key (``MEMORY USAGE``), the stored fields per item by kind (name +
  value bytes, from the small run), Redis commands and their ``usec`` per item
  (``INFO commandstats``), and the slowest single calls (``SLOWLOG``, > 100 ms).

Nothing is asserted: shared machines are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import taskiq_bench as tb  # puts the packages on sys.path when run from a checkout
from redis.exceptions import ResponseError

from mageflow import Mageflow, Signature, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.errors import StoreUnavailableError
from mageflow.store import RedisStore
from mageflow.testing.redis_server import redis_server

PREFIX = "scale"
TASK = "bench.none"  # a no-op returning None, in bench/taskiq_bench_app.py for the workers
SLOW_US = 100_000


# -- measuring ------------------------------------------------------------------------------
async def used_memory(client: aioredis.Redis) -> int:
    """``used_memory_dataset``: the data, without client buffers and the server's own
    overhead (a swarm_of build leaves MBs of query buffer on the connection for a while)."""
    return int((await client.info("memory"))["used_memory_dataset"])


async def command_usage(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in info.items()}


def usage_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    out = {}
    for k, (calls, usec) in after.items():
        c0, u0 = before.get(k, (0, 0))
        if calls - c0 > 0 and k != "info":
            out[k] = (calls - c0, usec - u0)
    return out


async def settled_memory(client: aioredis.Redis) -> int:
    """:func:`used_memory` once it stopped changing (1 s apart): a run leaves MBs the
    server frees within a second or two although no key holds them."""
    await asyncio.sleep(1.5)
    last = await used_memory(client)
    for _ in range(8):
        await asyncio.sleep(1)
        now = await used_memory(client)
        if abs(now - last) < 16_384:
            return now
        last = now
    return last


@dataclass
class Sampler:
    """``used_memory`` every ``period`` s while a run lasts; a sample that meets a busy
    script (BUSY) waits for it (no read timeout) or is skipped."""

    client: aioredis.Redis
    period: float
    queue_key: str
    """The swarm's queue (zset): its size and memory are read once, at the first sample
    that finds it"""
    peak: int = 0
    samples: int = 0
    queue: tuple[int, int] = (0, 0)
    """(entries, bytes) of the queue when first seen"""
    task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(ResponseError):
                self.peak = max(self.peak, await used_memory(self.client))
                self.samples += 1
                if not self.queue[0] and await self.client.exists(self.queue_key):
                    entries = int(await self.client.zcard(self.queue_key))
                    used = await self.client.memory_usage(self.queue_key, samples=0)
                    self.queue = (entries, int(used or 0))
            await asyncio.sleep(self.period)

    def __enter__(self) -> Sampler:
        self.task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


@dataclass
class Run:
    n: int
    build_s: float
    wall_s: float
    redis_cpu: float
    proc_cpu: float
    mem_built: int
    mem_peak: int
    mem_done: int
    keys_done: int
    samples: int
    commands: dict[str, tuple[int, int]]
    key_memory: dict[str, int]
    results_bytes: int
    slow: list[tuple[float, str]]
    queue: tuple[int, int]
    stalls: int
    """how often the client's wait met a busy Redis (a script past the busy threshold)"""
    base: int = 0
    """used_memory of the empty server before the run"""
    broker_mem: int = 0
    broker_cpu: float = 0.0
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Config:
    name: str
    mf: Mageflow
    store: aioredis.Redis  # the store's server, no read timeout (MEMORY USAGE, BUSY waits)
    cpu_pids: list[int]
    broker: aioredis.Redis | None = None


def cpu_of(pids: list[int]) -> float:
    return sum(tb.process_cpu(p) for p in pids)


def kind_of(key: str) -> str:
    """A key's kind: the workflow hash, ``<aux>:<sid>`` or ``<aux>``, or a global key."""
    if "{" not in key:
        head, sep, _minute = key.partition(":stats:")
        return (head + sep + "<minute>" if sep else key).replace(PREFIX, "<prefix>", 1)
    tail = key.split("}", 1)[1]
    return "H" + tail


async def key_memory(client: aioredis.Redis) -> dict[str, int]:
    """Bytes by key kind (``MEMORY USAGE ... SAMPLES 0``: every element, exact)."""
    out: dict[str, int] = {}
    async for raw in client.scan_iter(count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        used = await client.memory_usage(key, samples=0) or 0
        out[kind_of(key)] = out.get(kind_of(key), 0) + int(used)
    return out


async def workflow_hash(client: aioredis.Redis) -> str | None:
    async for raw in client.scan_iter(match=f"{PREFIX}:{{*}}", count=1000, _type="hash"):
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    return None


async def results_bytes(client: aioredis.Redis, h: str, n: int) -> int:
    """Bytes the results take in the workflow hash: the swarm's result list and the n
    items' ``result`` fields (name + value of one item, times n), each field with the
    hash's measured per-field overhead (its MEMORY USAGE less its raw field bytes)."""
    root = int(await client.hstrlen(h, "r:result"))
    item = None
    async for fld, value in client.hscan_iter(h, match="r.i*:result", count=1000):
        item = len(fld) + len(value)
        break
    per_field = await field_overhead(client, h)
    return root + per_field + n * ((item or 0) + per_field)


async def field_overhead(client: aioredis.Redis, h: str) -> int:
    """Bytes a hash field costs beyond its name and value, averaged over ``h`` (sampled)."""
    used = int(await client.memory_usage(h, samples=0) or 0)
    count = int(await client.hlen(h))
    raw, seen = 0, 0
    async for fld, value in client.hscan_iter(h, count=1000):
        raw += len(fld) + len(value)
        seen += 1
        if seen >= 20_000:
            break
    return round(used / count - raw / seen) if seen else 0


async def field_layout(client: aioredis.Redis, h: str, n: int) -> dict[str, tuple[int, int]]:
    """The items' fields by kind (``<sid>`` = the definition, ``<sid>:<field>``): count and
    name + value bytes, over the whole hash (run on the small swarm)."""
    out: dict[str, tuple[int, int]] = {}
    async for fld, value in client.hscan_iter(h, match="r.i*", count=1000):
        name = fld.decode() if isinstance(fld, bytes) else fld
        kind = "<sid>" + (":" + name.split(":", 1)[1] if ":" in name else "")
        count, size = out.get(kind, (0, 0))
        out[kind] = (count + 1, size + len(fld) + len(value))
    return out


async def slowlog(client: aioredis.Redis) -> list[tuple[float, str]]:
    entries = await client.slowlog_get(16)
    out = []
    for e in entries:
        cmd = e.get("command", b"")
        text = cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd)
        words = text.split()
        if words[0].upper() in ("EVALSHA", "FCALL") and len(words) > 3 and words[2].isdigit():
            op = 3 + int(words[2])  # EVALSHA sha / FCALL name, numkeys, keys..., op, args...
            text = f"{words[0].upper()} (engine op {' '.join(words[op : op + 1])!r})"
        out.append((e["duration"] / 1000, text[:60]))
    return sorted(out, reverse=True)


# -- one run ---------------------------------------------------------------------------------
async def wait_through_busy(sw: Signature) -> tuple[Any, int]:
    """``sw.wait()``, asked again when Redis is busy running a script past its busy
    threshold (BUSY replies, or a read timeout): (the result, how often that happened)."""
    stalls = 0
    while True:
        try:
            return await sw.wait(None), stalls
        except (ResponseError, StoreUnavailableError) as exc:
            if isinstance(exc, ResponseError) and not str(exc).startswith("BUSY"):
                raise
            stalls += 1
            await asyncio.sleep(0.5)


async def run_swarm(cfg: Config, n: int, cap: int, sample: float, detail: bool) -> Run:
    client = cfg.store
    await client.flushdb()
    await client.slowlog_reset()
    base = await settled_memory(client)
    broker_base = 0 if cfg.broker is None else await settled_memory(cfg.broker)
    started = time.perf_counter()
    sw = await cfg.mf.swarm_of(
        TASK, [{}] * n, config=SwarmConfig(max_concurrency=cap), is_swarm_closed=True
    )
    build_s = time.perf_counter() - started
    mem_built = await settled_memory(client) - base
    before = await command_usage(client)
    rcpu0 = await tb.redis_cpu(client)
    bcpu0 = 0.0 if cfg.broker is None else await tb.redis_cpu(cfg.broker)
    pcpu0 = cpu_of(cfg.cpu_pids)
    queue_key = cfg.mf.store.hash_key(sw.key.split(".", 1)[0]) + ":queue:r"
    with Sampler(client, sample, queue_key) as sampler:
        started = time.perf_counter()
        await sw.aio_run_no_wait({})
        result, stalls = await wait_through_busy(sw)
        wall = time.perf_counter() - started
    pcpu1 = cpu_of(cfg.cpu_pids)
    rcpu1 = await tb.redis_cpu(client)
    bcpu1 = 0.0 if cfg.broker is None else await tb.redis_cpu(cfg.broker)
    commands = usage_delta(before, await command_usage(client))
    if len(result) != n or any(r is not None for r in result):
        raise RuntimeError(f"swarm of {n} returned {len(result)} results, not {n} x None")
    mem_done = await settled_memory(client) - base
    h = await workflow_hash(client)
    assert h is not None, "the finished workflow's hash is missing"
    run = Run(
        n=n,
        build_s=build_s,
        wall_s=wall,
        redis_cpu=rcpu1 - rcpu0,
        proc_cpu=pcpu1 - pcpu0,
        mem_built=mem_built,
        mem_peak=max(sampler.peak - base, mem_done),
        mem_done=mem_done,
        keys_done=int(await client.dbsize()),
        samples=sampler.samples,
        commands=commands,
        key_memory=await key_memory(client),
        results_bytes=await results_bytes(client, h, n),
        slow=await slowlog(client),
        queue=sampler.queue,
        stalls=stalls,
        base=base,
    )
    if cfg.broker is not None:
        run.broker_mem = await settled_memory(cfg.broker) - broker_base
        run.broker_cpu = bcpu1 - bcpu0
    if detail:
        run.fields = await field_layout(client, h, n)
    return run


async def expiry(cfg: Config, base: int, ttl: int) -> tuple[float, int, list[str]]:
    """Wait until the finished workflow's keys expired (at most ttl + 60 s): (seconds
    waited, memory above ``base``, the kinds of the keys left)."""
    started = time.perf_counter()
    deadline = started + ttl + 60
    while time.perf_counter() < deadline:
        if await workflow_hash(cfg.store) is None:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(1)  # the rest of its keys, expiring in the same cycle
    waited = time.perf_counter() - started
    left = sorted({kind_of(k.decode()) async for k in cfg.store.scan_iter(count=1000)})
    return waited, await settled_memory(cfg.store) - base, left


# -- report ----------------------------------------------------------------------------------
def per_item(small: list[Run], big: Run) -> None:
    def med(f: Callable[[Run], float]) -> float:
        return statistics.median(f(r) for r in small)

    rows = [
        ("wall time", lambda r: r.wall_s / r.n * 1e6, "us"),
        ("store Redis CPU", lambda r: r.redis_cpu / r.n * 1e6, "us"),
        ("client+worker CPU", lambda r: r.proc_cpu / r.n * 1e6, "us"),
        ("build (swarm_of)", lambda r: r.build_s / r.n * 1e6, "us"),
    ]
    if big.broker_mem or big.broker_cpu:
        rows.append(("broker Redis CPU", lambda r: r.broker_cpu / r.n * 1e6, "us"))
    print(f"per item{'':<18}{f'n={small[0].n}':>14}{f'n={big.n}':>14}{'ratio':>8}")
    for label, f, unit in rows:
        s, b = med(f), f(big)
        ratio = b / s if s else float("nan")
        flag = "" if label.startswith("build") else ("  OK" if ratio <= 1.2 else "  > 1.2")
        print(f"  {label + f' ({unit})':<24}{s:14.1f}{b:14.1f}{ratio:8.2f}{flag}")
    print(f"  items/s{'':<17}{med(lambda r: r.n / r.wall_s):14,.0f}{big.n / big.wall_s:14,.0f}")


def memory(small: Run, big: Run, after: tuple[float, int, list[str]] | None, ttl: int) -> None:
    print("store memory above the empty server, bytes per item (target <= 200 + results)")
    print(f"  {'':<30}{f'n={small.n}':>14}{f'n={big.n}':>14}")
    for label, f in (
        ("built, before running", lambda r: r.mem_built),
        ("running (max of samples)", lambda r: r.mem_peak),
        ("finished", lambda r: r.mem_done),
        ("  of which results", lambda r: r.results_bytes),
        ("finished, without results", lambda r: r.mem_done - r.results_bytes),
    ):
        print(f"  {label:<30}{f(small) / small.n:14.1f}{f(big) / big.n:14.1f}")
    print(
        f"  keys when finished: {small.keys_done} / {big.keys_done}; "
        f"memory samples while running: {small.samples} / {big.samples}"
    )
    for r in (small, big):
        entries, used = r.queue
        if entries:
            print(
                f"  n={r.n}: the swarm's queue when first sampled: {entries:,} items, "
                f"{used / entries:.1f} bytes per queued item"
            )
    if big.broker_mem:
        print(
            f"  broker server (not the store), bytes per item after the run: "
            f"{small.broker_mem / small.n:.1f} / {big.broker_mem / big.n:.1f}"
        )
    if after is not None:
        waited, mem, keys = after
        print(
            f"  after the finished TTL ({ttl} s; waited {waited:.0f} s from the end): "
            f"{mem:,} bytes above the empty server in total ({mem / big.n:.2f} per item), "
            f"keys left: {', '.join(keys) or 'none'}"
        )


def breakdown(small: Run, big: Run) -> None:
    print("memory by key when finished (MEMORY USAGE), bytes per item:")
    kinds = sorted(
        set(small.key_memory) | set(big.key_memory), key=lambda k: -big.key_memory.get(k, 0)
    )
    for k in kinds:
        print(
            f"  {k:<30}{small.key_memory.get(k, 0) / small.n:14.1f}"
            f"{big.key_memory.get(k, 0) / big.n:14.1f}"
        )
    if small.fields:
        print(f"stored fields per item of the workflow hash (n={small.n}; name + value bytes):")
        total_n = total_b = 0
        for kind, (count, size) in sorted(small.fields.items(), key=lambda kv: -kv[1][1]):
            total_n, total_b = total_n + count, total_b + size
            print(f"  {kind:<30}{count / small.n:6.2f} fields {size / small.n:8.1f} bytes")
        print(f"  {'all':<30}{total_n / small.n:6.2f} fields {total_b / small.n:8.1f} bytes")
    print("store commands per item (calls, usec), incl. those inside the scripts:")
    top = sorted(big.commands.items(), key=lambda kv: -kv[1][1])[:14]
    for k, (calls, usec) in top:
        c0, u0 = small.commands.get(k, (0, 0))
        print(
            f"  {k:<16}{c0 / small.n:8.2f} {u0 / small.n:8.2f} us"
            f"{calls / big.n:10.2f} {usec / big.n:8.2f} us"
        )
    print(
        f"the client's wait met a busy Redis (BUSY / read timeout): {small.stalls} / "
        f"{big.stalls} time(s)"
    )
    print(f"slowest single calls of the n={big.n} run (> {SLOW_US // 1000} ms):")
    for ms, cmd in big.slow[:6] or [(0.0, "none")]:
        print(f"  {ms:10.1f} ms  {cmd}")


async def measure(cfg: Config, args: argparse.Namespace) -> None:
    await cfg.store.config_set("slowlog-log-slower-than", SLOW_US)
    await run_swarm(cfg, 200, args.cap, args.sample, False)  # warm up
    small = [
        await run_swarm(cfg, args.small, args.cap, args.sample, i == 0) for i in range(args.repeat)
    ]
    print(f"  small runs: {', '.join(f'{r.wall_s:.2f} s' for r in small)}", flush=True)
    big = await run_swarm(cfg, args.items, args.cap, args.sample, False)
    print(f"  big run: built in {big.build_s:.1f} s, ran in {big.wall_s:.1f} s", flush=True)
    after = await expiry(cfg, big.base, args.finished_ttl)
    print(f"\n== {cfg.name}: swarm of {args.items:,} vs {args.small:,} no-op items ==")
    per_item(small, big)
    memory(small[0], big, after, args.finished_ttl)
    breakdown(small[0], big)
    print(flush=True)


# -- configurations --------------------------------------------------------------------------
def with_timeout(url: str, seconds: float) -> str:
    """The store's URL with a read timeout of ``seconds`` (0: redis-py's default, 5 s in
    redis-py 8): a run call or the final call of a large swarm is one script that runs
    for longer than 5 s here (see SLOWLOG); with the default the client gives up on it."""
    return f"{url}?socket_timeout={seconds:g}" if seconds else url


async def local(args: argparse.Namespace) -> None:
    with redis_server() as server:
        print(f"(a) local backend + RedisStore, redis {server.version} ({server.strategy})")
        url = with_timeout(server.url, args.socket_timeout)
        store = RedisStore(url, prefix=PREFIX, finished_ttl=args.finished_ttl)
        mf = Mageflow(backend=LocalBackend(concurrency=args.concurrency), store=store)

        @mf.task(TASK)
        async def none(message: dict[str, Any]) -> None:
            return None

        client = aioredis.Redis.from_url(server.url, socket_timeout=None)
        await measure(Config("local + RedisStore", mf, client, [os.getpid()]), args)
        await mf.aclose()
        await client.aclose()


async def with_workers(args: argparse.Namespace, urls: dict[str, str], pids: list[int]) -> None:
    import taskiq_bench_app as app  # configured from the environment taskiq() set

    store = aioredis.Redis.from_url(urls["store"], socket_timeout=None)
    broker = None if args.shared else aioredis.Redis.from_url(urls["broker"])
    layout = "broker and store on one server" if args.shared else "separate servers"
    cfg = Config(
        f"taskiq, {args.workers} worker processes, {layout}",
        app.mf,
        store,
        [os.getpid(), *pids],
        broker,
    )
    await measure(cfg, args)
    await app.mf.aclose()
    await store.aclose()
    if broker is not None:
        await broker.aclose()


async def announced(url: str, n: int) -> list[int]:
    sig = aioredis.Redis.from_url(url, socket_timeout=None)
    pids = []
    for _ in range(n):
        got = await sig.blpop(["bench:ready"], timeout=120)
        if got is None:
            raise RuntimeError("a worker did not start in 120 s; see its log")
        pids.append(int(got[1]))
    await sig.aclose()
    return pids


def taskiq(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        names = ("store", "signal") if args.shared else ("broker", "store", "signal")
        servers = {n: stack.enter_context(redis_server()) for n in names}
        urls = {n: s.url for n, s in servers.items()}
        if args.shared:
            urls["broker"] = urls["store"]
        where = (
            "broker and store on one server (the fused path), signal on another"
            if args.shared
            else "broker, store, signal on separate Redis servers"
        )
        print(
            f"(b) taskiq, {args.workers} `mageflow worker` processes (--concurrency "
            f"{args.concurrency}); {where}"
        )
        tag = uuid.uuid4().hex[:8]
        os.environ.update(
            {
                "MAGEFLOW_BACKEND": "taskiq",
                "MAGEFLOW_TASKIQ_URL": urls["broker"],
                "MAGEFLOW_TASKIQ_QUEUE": f"scale-{tag}",
                "MAGEFLOW_REDIS_URL": with_timeout(urls["store"], args.socket_timeout),
                "MAGEFLOW_KEY_PREFIX": PREFIX,
                "MAGEFLOW_FINISHED_TTL": str(args.finished_ttl),
                "BENCH_SIGNAL_URL": urls["signal"],
            }
        )
        for name in ("MAGEFLOW_TASKIQ_BROKER", "MAGEFLOW_TASKIQ_IDLE_TIMEOUT"):
            os.environ.pop(name, None)
        sys.path.insert(0, str(tb.BENCH_DIR))
        env = {**os.environ, "PYTHONPATH": tb._pythonpath()}
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-bench-")))
        logs = [tmp / f"worker{i}.log" for i in range(args.workers)]
        args.py_spy = None
        try:
            for log in logs:
                stack.enter_context(tb.worker_process(env, args, log, None, None))
            pids = asyncio.run(announced(urls["signal"], args.workers))
            asyncio.run(with_workers(args, urls, pids))
        except BaseException:
            for log in logs:
                print(f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="small runs (median)")
    parser.add_argument("--configs", default="local,taskiq")
    parser.add_argument("--workers", type=int, default=2, help="taskiq worker processes")
    parser.add_argument("--concurrency", type=int, default=200, help="async slots per worker")
    parser.add_argument(
        "--cap",
        type=int,
        default=100,
        help="the swarm's max_concurrency (below --small, so both runs refill slots)",
    )
    parser.add_argument("--finished-ttl", type=int, default=20, help="seconds")
    parser.add_argument(
        "--socket-timeout",
        type=float,
        default=120,
        help="the store clients' read timeout, s (0: redis-py's default, 5 s)",
    )
    parser.add_argument("--sample", type=float, default=0.5, help="memory sample period (s)")
    parser.add_argument(
        "--shared",
        action="store_true",
        help="taskiq: the broker's stream on the store's server, so the engine appends and "
        "acknowledges the messages itself; the store's figures then include the broker's work",
    )
    args = parser.parse_args()
    print(
        f"swarm_of({TASK!r}, [{{}}] * n, max_concurrency={args.cap}, closed), run with "
        f"aio_run; finished TTL {args.finished_ttl} s; store read timeout "
        f"{args.socket_timeout or 'default'} s; {os.cpu_count()} CPUs (shared)"
    )
    for name in args.configs.split(","):
        if name == "local":
            asyncio.run(local(args))
        elif name == "taskiq":
            taskiq(args)
        else:
            parser.error(f"unknown configuration {name!r} (local, taskiq)")


if __name__ == "__main__":
    main()
