"""A client killed (exit 137, as under kill -9) between a transition and its publish:
real taskiq workers' reconcilers send what it recorded; everything runs exactly once."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mageflow import Mageflow, faults
from mageflow.testing.probe import RedisProbe

if TYPE_CHECKING:
    from conftest import AppWorkers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]
CLIENT = Path(__file__).with_name("client_crash.py")


async def killed_client(pool: AppWorkers, tmp_path: Path, point: str, mode: str, ns: str) -> str:
    faults.arm(tmp_path, point, faults.CLIENT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        mode,
        ns,
        env={**pool.env, "MAGEFLOW_FAULT_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 137, text
    assert "survived" not in text
    return text.split()[0]


async def test_client_killed_after_run(
    running: tuple[AppWorkers, Mageflow, RedisProbe], tmp_path: Path
) -> None:
    pool, app, probe = running
    ns = uuid.uuid4().hex[:8]
    key = await killed_client(pool, tmp_path, faults.AFTER_RUN, "run", ns)
    result = await (await app.load(key)).wait(timeout=30)
    assert result == {"step": 2, "mageflow_results": {"step": 1}}
    await asyncio.sleep(1.5)  # a re-send after the first one would show up by now
    assert [e["step"] for e in await probe.events(ns, "echo")] == [1, 2]
    assert len(await probe.events(ns, "done")) == 1


async def test_client_killed_after_close_swarm(
    running: tuple[AppWorkers, Mageflow, RedisProbe], tmp_path: Path
) -> None:
    pool, app, probe = running
    ns = uuid.uuid4().hex[:8]
    key = await killed_client(pool, tmp_path, faults.AFTER_CLOSE, "close", ns)
    assert await (await app.load(key)).wait(timeout=30) == [1, 2, 3]
    await asyncio.sleep(1.5)
    assert len(await probe.events(ns, "add")) == 3
    assert await probe.events(ns, "total") == [[1, 2, 3]]
