"""Fixtures for the taskiq transport tests: a real Redis and real worker processes.

Every pytest(-xdist) process starts its own redis-server; every test uses its own stream
(queue) name, so tests and xdist workers share nothing. Worker processes run in their own
process group and are stopped with SIGTERM, then SIGKILL after a grace period, so a
worker that does not exit never hangs the suite.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]
try:
    import mageflow
    import mageflow_taskiq
except ImportError:  # workspace packages not installed into the venv: use the source tree
    sys.path[:0] = [
        str(ROOT / "packages/mageflow-core/src"),
        str(ROOT / "packages/mageflow-taskiq/src"),
    ]
    import mageflow
    import mageflow_taskiq

from mageflow.testing.redis_server import redis_server  # noqa: E402
from mageflow_taskiq.backend import (  # noqa: E402
    ENV_IDLE_TIMEOUT,
    ENV_QUEUE,
    ENV_URL,
    TaskiqBackend,
)

APP = "tests.taskiq.transport_app"
STOP_GRACE = 10.0
READY_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture
def queue() -> str:
    return f"mf-tq-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def publisher(redis_url: str, queue: str) -> AsyncIterator[TaskiqBackend]:
    """The publishing side, configured like the workers but registering nothing."""
    backend = TaskiqBackend.from_options(
        {"broker_url": redis_url, "queue_name": queue, "idle_timeout": 2}
    )
    await backend.startup()
    yield backend
    await backend.shutdown()


def _pythonpath() -> str:
    parts = [
        str(ROOT),
        str(Path(mageflow.__file__).resolve().parents[1]),
        str(Path(mageflow_taskiq.__file__).resolve().parents[1]),
    ]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net if a fixture teardown never ran (the suite was interrupted)."""
    for proc in _LIVE:
        if proc.poll() is None:  # the group leader lives, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    kind: str
    stop_seconds: float | None = None
    killed: bool = False

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL the whole process group: the taskiq manager and its worker children."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = True
        _LIVE.discard(self.proc)

    def stop(self, grace: float = STOP_GRACE) -> float:
        """SIGTERM the main process (as a container runtime does); SIGKILL the group if it
        has not exited after ``grace`` seconds. Returns the seconds it took to exit."""
        if self.proc.poll() is None:
            start = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill9()
            else:  # just exited: its group id is not reused yet; kill stray children
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.stop_seconds = time.monotonic() - start
        _LIVE.discard(self.proc)
        return self.stop_seconds or 0.0


@dataclass
class Workers:
    redis_url: str
    queue: str
    tmp_path: Path
    started: list[Worker] = field(default_factory=list)

    def start(
        self, kind: str = "cli", *, idle_timeout: float = 2.0, concurrency: int | None = None
    ) -> Worker:
        """``kind="cli"``: ``taskiq worker APP:broker``; ``kind="run_worker"``: a
        ``python -c`` calling ``backend.run_worker``."""
        if kind == "cli":
            cmd = [sys.executable, "-m", "taskiq", "worker", f"{APP}:broker", "--workers", "1"]
            if concurrency:
                cmd += ["--max-async-tasks", str(concurrency)]
        else:
            code = f"from {APP} import backend; backend.run_worker(concurrency={concurrency})"
            cmd = [sys.executable, "-c", code]
        env = {
            **os.environ,
            ENV_URL: self.redis_url,
            ENV_QUEUE: self.queue,
            ENV_IDLE_TIMEOUT: str(idle_timeout),
            "PYTHONPATH": _pythonpath(),
        }
        env.pop("MAGEFLOW_TASKIQ_BROKER", None)
        log = self.tmp_path / f"worker-{len(self.started)}-{kind}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        worker = Worker(proc, log, kind)
        self.started.append(worker)
        _LIVE.add(proc)
        return worker

    async def wait_ready(self, count: int, rdb: aioredis.Redis) -> set[int]:
        """Wait until ``count`` worker processes announced themselves; return their pids."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            pids = {int(p) for p in await rdb.smembers(f"{self.queue}:ready")}  # transport_app
            if len(pids) >= count:
                return pids
            for w in self.started:
                assert w.proc.poll() is None or w.killed, f"worker exited:\n{w.log_tail()}"
            await asyncio.sleep(0.05)
        tails = "\n---\n".join(w.log_tail() for w in self.started)
        raise AssertionError(f"{count} workers not ready in {READY_TIMEOUT}s:\n{tails}")


@pytest.fixture
def workers(redis_url: str, queue: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(redis_url, queue, tmp_path)
    yield pool
    for worker in pool.started:
        worker.stop()


@pytest.fixture
def record_key(queue: str) -> Callable[[str], str]:
    return lambda name: f"{queue}:rec:{name}"
