"""A real ``mageflow worker`` process on taskiq records itself in the worker registry,
``mageflow workers`` (its own process) lists it, and it leaves the list when stopped."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

import pytest

from mageflow import Mageflow
from mageflow.flows import workers
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import AppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_a_taskiq_worker_process_is_listed(
    running: tuple[AppWorkers, Mageflow, RedisProbe],
) -> None:
    pool, app, _ = running
    (worker,) = pool.started
    for _ in range(200):
        found = [w for w in await workers.live_workers(app) if w.pid == worker.proc.pid]
        if found:
            break
        await asyncio.sleep(0.05)
    (me,) = found
    assert me.backend == "taskiq" and me.queues == ["default"]  # given no --queues
    assert me.settings["queue_name"] == pool.queue
    assert "contract.add" in me.tasks
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mageflow",
        "workers",
        "--json",
        env=pool.env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert me.id in {w["id"] for w in json.loads(out)}
