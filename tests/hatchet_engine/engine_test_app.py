"""Plain hatchet-sdk tasks, and a worker entry point, for the test engine's end-to-end tests.

The worker runs as a subprocess (``python engine_test_app.py --name N --slots S --tasks
a,b``); tests build the same task objects on their own client with :func:`build_tasks`
to trigger them. Nothing here imports mageflow.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from hatchet_sdk import Context, Hatchet, NonRetryableException
from pydantic import BaseModel

ECHO = "engine-echo"
FLAKY = "engine-flaky"
FATAL = "engine-fatal"
SLEEPER = "engine-sleeper"
SLOT_PROBE = "engine-slot-probe"
SLOW_TIMEOUT = "engine-slow-timeout"
DAG = "engine-dag"


class EchoInput(BaseModel):
    message: str


class MarkerInput(BaseModel):
    marker_dir: str
    """A directory the task writes marker files into, for the test to observe."""


class ProbeInput(BaseModel):
    index: int
    seconds: float


# Concurrency observed from inside the worker process (all tasks run in its event loop).
_running = 0
_max_running = 0


def build_tasks(hatchet: Hatchet) -> dict[str, Any]:
    """Define the test tasks on ``hatchet``; returns them by name.

    SDK 1.43 does not infer ``input_validator`` from the ``input`` annotation: without
    it the task receives an ``EmptyModel``.
    """

    @hatchet.task(name=ECHO, input_validator=EchoInput)
    async def echo(input: EchoInput, ctx: Context) -> dict[str, Any]:
        ctx.log(f"echoing {input.message}")
        return {
            "echo": input.message,
            "attempt": ctx.attempt_number,
            "metadata": dict(ctx.additional_metadata),
            "worker_pid": os.getpid(),
        }

    @hatchet.task(name=FLAKY, retries=2, input_validator=EchoInput)
    async def flaky(input: EchoInput, ctx: Context) -> dict[str, Any]:
        if ctx.attempt_number == 1:
            raise RuntimeError(f"first attempt of {input.message} fails")
        return {"attempt": ctx.attempt_number, "retry_count": ctx.retry_count}

    @hatchet.task(name=FATAL, retries=3, input_validator=EchoInput)
    async def fatal(input: EchoInput, ctx: Context) -> dict[str, Any]:
        raise NonRetryableException(f"{input.message}: do not retry")

    @hatchet.task(name=SLEEPER, input_validator=MarkerInput)
    async def sleeper(input: MarkerInput, ctx: Context) -> dict[str, Any]:
        marker = Path(input.marker_dir)
        (marker / f"started-{ctx.attempt_number}").write_text(ctx.step_run_id)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            (marker / "cancelled").write_text(str(ctx.exit_flag))
            raise
        (marker / "finished").write_text("")
        return {"slept": True}

    @hatchet.task(name=SLOT_PROBE, input_validator=ProbeInput)
    async def slot_probe(input: ProbeInput, ctx: Context) -> dict[str, Any]:
        global _running, _max_running
        _running += 1
        _max_running = max(_max_running, _running)
        started = time.monotonic()
        try:
            await asyncio.sleep(input.seconds)
            return {
                "index": input.index,
                "max_seen": _max_running,
                "started": started,
                "finished": time.monotonic(),
            }
        finally:
            _running -= 1

    @hatchet.task(name=SLOW_TIMEOUT, execution_timeout="1s", retries=1, input_validator=MarkerInput)
    async def slow_timeout(input: MarkerInput, ctx: Context) -> dict[str, Any]:
        marker = Path(input.marker_dir)
        (marker / f"attempt-{ctx.attempt_number}").write_text("")
        await asyncio.sleep(30)
        return {}

    dag = hatchet.workflow(name=DAG, input_validator=EchoInput)

    @dag.task()
    async def shout(input: EchoInput, ctx: Context) -> dict[str, Any]:
        return {"upper": input.message.upper()}

    @dag.task(parents=[shout])
    async def wrap(input: EchoInput, ctx: Context) -> dict[str, Any]:
        return {"wrapped": f"<{ctx.task_output(shout)['upper']}>"}

    return {
        DAG: dag,
        ECHO: echo,
        FLAKY: flaky,
        FATAL: fatal,
        SLEEPER: sleeper,
        SLOT_PROBE: slot_probe,
        SLOW_TIMEOUT: slow_timeout,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    args = parser.parse_args()
    hatchet = Hatchet()
    tasks = build_tasks(hatchet)
    selected = [tasks[name] for name in args.tasks.split(",")]
    worker = hatchet.worker(args.name, slots=args.slots, workflows=selected)
    worker.start()


if __name__ == "__main__":
    main()
