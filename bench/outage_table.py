"""The outage table of issue 13 (not a test; prints a markdown table).

Each row is one scenario run as ``tests/taskiq/outage.py`` describes (the code the outage
test asserts on): real Redis servers, two real ``mageflow worker`` processes on taskiq, a
closed swarm of ``--items`` items (cap ``--cap``) and a chain of ``--steps`` steps; once a
third of the swarm completed, the store's Redis, the broker's Redis or both (each on its own
server) are restarted by SIGTERM or SIGKILL, with AOF (``appendonly yes``, fsync always) or
without (an RDB snapshot, which only a SIGTERM writes), or one worker is killed with
``kill -9``. Columns:

- runs: user-code executions, counted by the tasks themselves (on a Redis never restarted);
- lost: items and steps whose user code never ran; ran twice: items run more than once,
  and why (their first run was on the killed worker, or unexplained);
- double callbacks: the swarm's and the chain's success callback beyond their first call;
- max concurrency: swarm items running at once, against the cap;
- hung: a workflow not finished ``--timeout`` s after the disruption; worker exits: workers
  that stopped on their own.

Then the Redis memory per finished swarm item with a 10 kB run message
(``run_message_memory.py``). A SIGKILL of the store without AOF loses what the store
acknowledged: no orchestration can recover it, and the row shows what happens.

    python bench/outage_table.py [--items 300] [--cap 20] [--steps 30] [--timeout 40]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_message_memory import measure  # noqa: E402

from mageflow.testing.redis_server import redis_server  # noqa: E402
from tests.taskiq.conftest import AppWorkers  # noqa: E402
from tests.taskiq.outage import Outage, Outcome, pool_options, ride_out, servers  # noqa: E402

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
PERSISTENCE = {"AOF": "aof", "no AOF": "rdb"}
TARGETS = {"store": ("store",), "broker": ("broker",), "both": ("store", "broker")}


def scenarios(base: Outage) -> list[Outage]:
    rows = [
        replace(base, name=f"{target} {sig_name} {p_name}", restart=restart, sig=sig,
                persistence=persistence)
        for target, restart in TARGETS.items()
        for sig_name, sig in SIGNALS.items()
        for p_name, persistence in PERSISTENCE.items()
    ]  # fmt: skip
    rows.append(replace(base, name="kill -9 of one worker", restart=(), kill_worker=True))
    return rows


def row(seen: Outcome) -> str:
    f = seen.figures()
    why = ", ".join(f"{n} {reason}" for reason, n in f["ran_twice_why"].items())
    cells = [
        f["scenario"],
        str(f["runs"]),
        str(f["lost"]),
        f"{f['ran_twice']} ({why})" if why else "0",
        str(f["double_callbacks"]),
        f"{f['max_running']} / {f['cap']}",
        "**yes**" if f["hung"] else "no",
        str(f["worker_exits"]),
        f"{f['seconds_to_finish_after']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "scenario", "runs", "lost", "ran twice (why)", "double callbacks",
    "max concurrency / cap", "hung", "worker exits", "s to finish after",
]  # fmt: skip


async def table(
    base: Outage, timeout: float, probe_url: str, log_dir: Path, only: str | None
) -> None:
    print(f"{base.items} swarm items (cap {base.cap}, {base.item_seconds} s each) and a chain "
          f"of {base.steps} steps; disrupted after {base.restart_after} completed items; "
          f"2 `mageflow worker` processes (concurrency {base.concurrency} each)\n")  # fmt: skip
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for n, outage in enumerate(scenarios(base)):
        if only is not None and only not in outage.name:
            continue
        (log_dir / str(n)).mkdir()
        with servers(outage) as pair:
            pool = AppWorkers(probe_url, log_dir / str(n), **pool_options(*pair))
            seen = await ride_out(outage, pool, pair, probe_url, done_timeout=timeout)
        print(row(seen), flush=True)


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("stamina").setLevel(logging.ERROR)  # the client's status retries
    started = time.monotonic()
    base = Outage(
        name="", restart=(), sig=signal.SIGTERM, persistence="none", items=args.items,
        cap=args.cap, steps=args.steps, restart_after=args.items // 3, concurrency=args.cap,
    )  # fmt: skip
    with redis_server() as probe, tempfile.TemporaryDirectory() as logs:
        await table(base, args.timeout, probe.url, Path(logs), args.only)
        empty = await measure(probe.url, args.memory_items, {})
        big = await measure(probe.url, args.memory_items, {"blob": "x" * 10 * 1024})
    print(f"\nRedis memory per finished swarm item ({args.memory_items} items, local "
          f"backend): {empty[1]:.0f} bytes with an empty run message, {big[1]:.0f} with a "
          f"10 kB one: the message costs {big[1] - empty[1]:.0f} bytes per item "
          "(target <= 1024)")  # fmt: skip
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=40.0)
    parser.add_argument("--memory-items", type=int, default=2000)
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    asyncio.run(main(parser.parse_args()))
