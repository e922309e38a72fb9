"""``mageflow worker`` on taskiq, as a real subprocess over a real Redis: what it prints,
the Prometheus metrics it serves (scraped), the final failures it logs, and the one-line
error and exit 2 for an unreachable store or broker."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import ENV_IDLE_TIMEOUT, ENV_QUEUE, ENV_URL, Worker, _pythonpath, spawn

from mageflow import Mageflow, SwarmConfig
from mageflow.errors import TaskFailedError

pytestmark = pytest.mark.slow

APP = """
from mageflow import Mageflow

mf = Mageflow(backend="taskiq")  # store, broker and queue from the environment


@mf.task("wk.ok")
async def ok(msg):
    return 1


@mf.task("wk.bad")
async def bad(msg):
    raise RuntimeError("wk.bad broke on purpose")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(store_url: str, broker_url: str, queue: str, tmp_path: Path) -> dict[str, str]:
    import os

    env = {
        **os.environ,
        "MAGEFLOW_REDIS_URL": store_url,
        ENV_URL: broker_url,
        ENV_QUEUE: queue,
        ENV_IDLE_TIMEOUT: "2",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), _pythonpath()]),
        "COLUMNS": "200",
    }
    env.pop("MAGEFLOW_TASKIQ_BROKER", None)
    env.pop("MAGEFLOW_BACKEND", None)
    return env


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, task: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{task="{task}"}} '):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "wkapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def served(app_dir: Path, redis_url: str, queue: str) -> Iterator[tuple[Worker, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "mageflow", "worker", "wkapp:mf", "--metrics-port", str(port)]
    worker = spawn(cmd, worker_env(redis_url, redis_url, queue, app_dir), app_dir / "w.log", "cli")
    deadline = time.monotonic() + 30
    while True:
        assert worker.proc.poll() is None, worker.log_tail()
        try:
            scrape(port)
            break
        except OSError:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
    yield worker, port
    worker.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def client(redis_url: str, queue: str) -> AsyncIterator[Mageflow]:
    mf = Mageflow(
        backend="taskiq",
        redis_url=redis_url,
        broker_url=redis_url,
        queue_name=queue,
        idle_timeout=2,
    )

    @mf.task("wk.ok")
    async def ok(msg: dict[str, Any]) -> int:  # runs on the worker, never here
        return 1

    @mf.task("wk.bad")
    async def bad(msg: dict[str, Any]) -> int:
        return 0

    yield mf
    await mf.aclose()


@pytest.mark.asyncio(loop_scope="session")
async def test_worker_prints_serves_metrics_and_logs_final_failures(
    served: tuple[Worker, int], client: Mageflow, redis_url: str, queue: str
) -> None:
    worker, port = served
    for _ in range(3):
        assert await (await client.sign("wk.ok")).aio_run({}, timeout=30) == 1
    with pytest.raises(TaskFailedError):
        await (await client.sign("wk.bad")).aio_run({}, timeout=30)
    items = [await client.sign("wk.ok") for _ in range(4)]
    sw = await client.swarm(items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    await sw.aio_run({}, timeout=30)

    text = await asyncio.to_thread(scrape, port)
    assert metric(text, "mageflow_task_started_total", "wk.ok") == 7
    assert metric(text, "mageflow_task_succeeded_total", "wk.ok") == 7
    assert metric(text, "mageflow_task_failed_total", "wk.bad") == 1
    assert metric(text, "mageflow_task_retried_total", "wk.bad") == 0
    assert metric(text, "mageflow_task_duration_seconds_count", "wk.ok") == 7
    assert "# TYPE mageflow_swarm_running gauge" in text
    assert f'mageflow_swarm_running{{swarm="{sw.key}"}}' not in text  # finished: dropped

    log = worker.log.read_text()
    assert "backend=taskiq" in log and f"queues   {queue}" in log
    assert f"store    {redis_url}" in log
    assert "wk.bad, wk.ok" in log and "concurrency backend default" in log
    assert "failed for good" in log and "wk.bad broke on purpose" in log


def run_worker(env: dict[str, str], cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mageflow", "worker", "wkapp:mf", *extra],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_unreachable_store_is_one_line_and_exit_2(app_dir: Path, redis_url: str) -> None:
    dead = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    done = run_worker(worker_env(dead, redis_url, "q", app_dir), app_dir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "secret" not in done.stdout + done.stderr
    assert "user:***@" in done.stdout
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr


def test_unreachable_broker_is_one_line_and_exit_2(app_dir: Path, redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = run_worker(worker_env(redis_url, dead, "q", app_dir), app_dir, "--log-level", "ERROR")
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "task manager" in errors[0], done.stdout
    assert "Traceback" not in done.stderr, done.stderr
