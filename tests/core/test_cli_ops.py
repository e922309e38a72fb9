"""Operator commands against a real Redis holding real workflow runs (local backend; the
workers run in this test process, the CLI is a separate process reading the same Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.errors import TaskFailedError
from mageflow.store import RedisStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Cli:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.env = {
            **os.environ,
            "MAGEFLOW_REDIS_URL": redis_url,
            "MAGEFLOW_KEY_PREFIX": prefix,
            "COLUMNS": "200",
            "MAGEFLOW_BACKEND": "local",
        }

    async def __call__(
        self, *args: str, timeout: float = 60, cwd: Path | None = None
    ) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mageflow",
            *args,
            env=self.env,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


def register_gated(mf: Mageflow) -> None:
    @mf.task("gated")
    def gated(msg: dict[str, Any]) -> int:  # sync: runs in a thread
        if not os.path.exists(msg["path"]):
            raise RuntimeError("gate closed")
        return 10


RETRY_APP = """
from mageflow import Mageflow
from test_cli_ops import register_gated

mf = Mageflow(backend="local")  # MAGEFLOW_REDIS_URL and MAGEFLOW_KEY_PREFIX from the env
register_gated(mf)

@mf.task("inc")
async def inc(msg):
    return (msg.get("mageflow_results") or 0) + 1
"""


@pytest_asyncio.fixture(loop_scope="session")
async def setup(redis_url: str) -> AsyncIterator[tuple[Mageflow, Cli]]:
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    mf = Mageflow(
        backend=LocalBackend(workers=2, concurrency=20), store=RedisStore(redis_url, prefix=prefix)
    )
    gate = asyncio.Event()

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        value = msg.get("mageflow_results", 0) or 0
        return (sum(value) if isinstance(value, list) else int(value)) + 1

    @mf.task("tick")
    async def tick(msg: dict[str, Any]) -> int:
        await asyncio.sleep(0.002)
        if msg.get("fail"):
            raise RuntimeError("tick failed")
        return 1

    @mf.task("gate")
    async def wait_gate(msg: dict[str, Any]) -> int:
        await gate.wait()
        return 0

    register_gated(mf)
    mf.gate = gate  # type: ignore[attr-defined]
    yield mf, Cli(redis_url, prefix)
    await mf.aclose()


async def test_status_tree_ls_on_a_chain_with_nested_swarm(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    inner = await mf.swarm(["inc", "inc", "inc"], task_name="fan-out", is_swarm_closed=True)
    wf = await mf.chain(["inc", inner, "inc"], name="pipeline")
    await wf.aio_run({}, timeout=10)

    code, out, err = await cli("status", wf.key)
    assert code == 0, err
    assert "pipeline" in out and "done" in out and "steps" in out

    code, out, _ = await cli("status", "--json", wf.key)
    data = json.loads(out)
    assert data["status"] == "done"
    assert data["result"] == 7  # 0+1 -> three items of 1+1 -> 2+2+2+1
    assert len(data["children"]) == 3

    code, out, _ = await cli("tree", wf.key)
    assert code == 0
    lines = out.splitlines()
    assert "chain pipeline done" in lines[0]
    assert sum("task inc done" in line for line in lines) == 5
    assert any("swarm fan-out done" in line for line in lines)

    code, out, _ = await cli("ls", "--name", "pipeline")
    assert wf.key in out
    code, out, _ = await cli("ls", "--status", "failed", "--name", "pipeline")
    assert wf.key not in out


async def test_tree_shows_counts_for_large_swarms(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    sw = await mf.swarm(["tick"] * 60, task_name="big", is_swarm_closed=True)
    await sw.aio_run({}, timeout=20)
    code, out, _ = await cli("tree", sw.key, "--max-items", "50")
    assert code == 0
    assert "total 60" in out and "done 60" in out and "counts only" in out
    assert "task tick" not in out


@pytest.mark.parametrize(("fail", "exit_code"), [(False, 0), (True, 1)])
async def test_watch_follows_a_1000_item_swarm(
    setup: tuple[Mageflow, Cli], fail: bool, exit_code: int
) -> None:
    mf, cli = setup
    items = [await mf.sign("tick", fail=fail and i == 700) for i in range(1000)]
    sw = await mf.swarm(
        items, config=SwarmConfig(max_concurrency=20, stop_after_n_failures=1), is_swarm_closed=True
    )
    await sw.aio_run_no_wait({})
    code, out, err = await cli("watch", sw.key, "--interval", "0.1", timeout=120)
    assert code == exit_code, out + err
    assert "total" not in out.splitlines()[-1]
    if fail:
        assert "finished: failed" in out
        with pytest.raises(TaskFailedError):
            await sw.wait(timeout=1)
    else:
        assert "done 1000" in out
        assert "finished: done" in out


async def test_suspend_and_interrupt_from_the_cli(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    mf.gate.clear()  # type: ignore[attr-defined]
    wf = await mf.chain(["gate", "inc"], name="held")
    await wf.aio_run_no_wait({})
    code, out, _ = await cli("suspend", wf.key)
    assert code == 0
    assert "suspended" in out
    mf.gate.set()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    code, out, _ = await cli("status", "--json", wf.key)
    assert json.loads(out)["status"] == "suspended"
    held = json.loads(out)["children"][1]  # held: it waits for resume, not for a worker
    code, out, _ = await cli("status", "--json", held)
    # suspend holds the chain's advancement: step 2 is not even dispatched before resume
    assert json.loads(out)["status"] == "pending" and json.loads(out)["dispatched_at"] is None
    for key in (wf.key, held):
        code, out, _ = await cli("status", key)
        assert code == 0 and "waiting" not in out, out
    code, out, _ = await cli("tree", wf.key)
    assert "waiting" not in out
    await wf.resume()  # local backend: the workers live in this process
    assert await wf.wait(timeout=5) == 1

    wf2 = await mf.chain(["inc", "inc"])
    code, out, _ = await cli("interrupt", wf2.key)
    assert "interrupted" in out
    code, out, _ = await cli("cancel", wf2.key)
    assert "canceled" in out


async def test_unknown_key_and_unreachable_redis_are_clear(setup: tuple[Mageflow, Cli]) -> None:
    _, cli = setup
    code, out, _ = await cli("status", "0000000000000000.r")
    assert code == 2
    assert "no signature stored under '0000000000000000.r'" in out
    bad = Cli("redis://admin:hunter2@127.0.0.1:1/0", "x")
    code, out, _ = await bad("ls")
    assert code == 2
    assert "redis://admin:***@127.0.0.1:1/0" in out
    assert "hunter2" not in out


async def test_identifiers_shown_and_found_by_ls_id(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    order = uuid.uuid4().hex[:8]
    step = await mf.sign("inc", task_identifiers={"order_id": order, "shard": 3})
    other = await mf.sign("inc", task_identifiers={"order_id": order, "shard": 4})
    wf = await mf.chain(["inc", step], name="ids")  # step moves into the chain
    await wf.aio_run({}, timeout=10)

    code, out, err = await cli("ls", "--id", f"order_id={order}")
    assert code == 0, err
    assert step.key in out and other.key in out and f"{wf.key} " not in out
    assert f"order_id={order}, shard=3" in out
    code, out, _ = await cli("ls", "--id", f"order_id={order}", "--id", "shard=3")
    assert step.key in out and other.key not in out  # every pair must match
    code, out, _ = await cli("ls", "--id", f"order_id={order}", "--status", "done")
    assert step.key in out and other.key not in out

    code, out, _ = await cli("status", step.key)
    assert code == 0 and f"order_id={order}, shard=3" in out
    code, out, _ = await cli("status", "--json", step.key)
    assert json.loads(out)["identifiers"] == {"order_id": order, "shard": 3}
    code, out, _ = await cli("tree", wf.key)
    (line,) = [x for x in out.splitlines() if step.key in x]
    assert f"order_id={order}, shard=3" in line

    code, out, err = await cli("ls", "--id", "order_id")
    assert code == 2 and "expected NAME=VALUE" in err


async def test_retry_from_the_cli(setup: tuple[Mageflow, Cli], tmp_path: Path) -> None:
    """``mageflow --app retry_app:mf retry KEY``: the CLI's own app re-runs the failed step
    (the local backend runs tasks in the process that publishes them) and the rest."""
    mf, cli = setup
    gate = tmp_path / "gate-open"
    wf = await mf.chain(["inc", await mf.sign("gated", path=str(gate)), "inc"], name="retried")
    with pytest.raises(TaskFailedError):
        await wf.aio_run({}, timeout=10)
    (tmp_path / "retry_app.py").write_text(RETRY_APP)
    paths = [str(Path(__file__).parent), cli.env.get("PYTHONPATH", "")]
    cli.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    gate.touch()
    code, out, err = await cli("--app", "retry_app:mf", "retry", wf.key, cwd=tmp_path, timeout=120)
    assert code == 0, out + err
    assert wf.key in out
    assert await wf.wait(timeout=30) == 11
    code, out, _ = await cli("status", "--json", wf.key)
    assert json.loads(out)["status"] == "done"
    code, out, _ = await cli("retry", wf.key)
    assert code == 2
    assert "is done, not failed" in out
