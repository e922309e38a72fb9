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
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
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

from mageflow.testing import contract_tasks  # noqa: E402
from mageflow.testing.probe import RedisProbe  # noqa: E402
from mageflow.testing.redis_server import redis_server  # noqa: E402
from mageflow.testing.workers import pid_alive  # noqa: E402
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


def spawn(cmd: list[str], env: dict[str, str], log: Path, kind: str) -> Worker:
    """Start ``cmd`` in its own process group (so that a SIGKILL reaches the children a
    ``taskiq worker`` forks), output to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    _LIVE.add(proc)
    return Worker(proc, log, kind)


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
        worker = spawn(cmd, env, self.tmp_path / f"worker-{len(self.started)}-{kind}.log", kind)
        self.started.append(worker)
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


# --------------------------------------------------------------------------------------
# Worker processes of a MageFlow app (tests/taskiq/contract_app.py)

CONTRACT_APP = "tests.taskiq.contract_app"
SHUTDOWN_SAFE_RECEIVER = "mageflow_taskiq.backend:ShutdownSafeReceiver"


@dataclass
class AppWorkers:
    """Worker processes serving ``contract_app`` with one environment: the broker (a
    stream on ``redis_url``, its own queue name), the store (its own key prefix), the
    probe, and optionally a fault directory. Queue and prefix are unique, so harnesses
    and pytest-xdist processes never share anything.

    ``kind="mageflow"`` runs ``mageflow worker contract_app:mf`` (one process);
    ``kind="taskiq"`` runs ``taskiq worker contract_app:broker --workers N`` (a manager
    that forks N worker processes and restarts any that dies). :meth:`supervise` restarts
    a dead ``mageflow worker``, as a process supervisor (systemd, Kubernetes) would.
    """

    redis_url: str
    log_dir: Path
    idle_timeout: float = 2.0
    fault_dir: Path | None = None
    store_url: str | None = None  # the store's Redis (default: redis_url)
    broker_url: str | None = None  # the broker's Redis (default: redis_url)
    extra_env: dict[str, str] = field(default_factory=dict)
    queue: str = field(default_factory=lambda: f"mf-tq-{uuid.uuid4().hex[:12]}")
    prefix: str = field(default_factory=lambda: f"mf-t-{uuid.uuid4().hex[:8]}")
    started: list[Worker] = field(default_factory=list)
    restarts: list[tuple[float, Worker]] = field(default_factory=list)
    derive_queue: bool = False
    """Give the workers and the client no queue name: the stream comes from the prefix."""
    _specs: dict[int, tuple[str, int, int, str | None]] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "MAGEFLOW_BACKEND": "taskiq",
            ENV_URL: self.broker_url or self.redis_url,
            ENV_QUEUE: self.queue,
            ENV_IDLE_TIMEOUT: str(self.idle_timeout),
            "MAGEFLOW_REDIS_URL": self.store_url or self.redis_url,
            "MAGEFLOW_KEY_PREFIX": self.prefix,
            "MAGEFLOW_PROBE_URL": self.redis_url,
            "PYTHONPATH": _pythonpath(),
            **self.extra_env,
        }
        env.pop("MAGEFLOW_TASKIQ_BROKER", None)
        env.pop("MAGEFLOW_FAULT_DIR", None)
        if self.derive_queue:
            env.pop(ENV_QUEUE)
            env["MAGEFLOW_CONTRACT_READY"] = self.queue  # contract_app.ENV_READY
        if self.fault_dir is not None:
            env["MAGEFLOW_FAULT_DIR"] = str(self.fault_dir)
        return env

    def client_app(self) -> mageflow.Mageflow:
        """The test process's ``Mageflow``: same broker, store and prefix as the workers."""
        return mageflow.Mageflow(
            backend="taskiq",
            broker_url=self.broker_url or self.redis_url,
            queue_name=None if self.derive_queue else self.queue,
            idle_timeout=self.idle_timeout,
            redis_url=self.store_url or self.redis_url,
            key_prefix=self.prefix,
        )

    def start(
        self,
        kind: str = "mageflow",
        *,
        processes: int = 1,
        concurrency: int = 4,
        queues: str | None = None,
    ) -> Worker:
        """``queues``: the ``--queues`` of a ``mageflow worker``."""
        if kind == "mageflow":
            assert processes == 1, "`mageflow worker` is one process; start several"
            cmd = [sys.executable, "-m", "mageflow", "worker", f"{CONTRACT_APP}:mf"]
            cmd += ["--concurrency", str(concurrency)]
            if queues is not None:
                cmd += ["--queues", queues]
        else:
            cmd = [sys.executable, "-m", "taskiq", "worker", f"{CONTRACT_APP}:broker"]
            cmd += ["--workers", str(processes), "--max-async-tasks", str(concurrency)]
            cmd += ["--receiver", SHUTDOWN_SAFE_RECEIVER]
        with self._lock:
            log = self.log_dir / f"worker-{len(self.started)}-{kind}.log"
            worker = spawn(cmd, self.env, log, kind)
            self.started.append(worker)
            self._specs[id(worker)] = (kind, processes, concurrency, queues)
        return worker

    def supervise(self, period: float = 0.1) -> None:
        """Restart any ``mageflow worker`` that exits on its own (not stopped/killed here)."""

        def loop() -> None:
            while not self._stopping.wait(period):
                with self._lock:
                    dead = [
                        w
                        for w in self.started
                        if w.kind == "mageflow" and not w.killed and w.proc.poll() is not None
                    ]
                    for w in dead:
                        w.killed = True  # handled: replaced below
                        _LIVE.discard(w.proc)
                for w in dead:
                    if self._stopping.is_set():
                        return
                    _, _, concurrency, queues = self._specs[id(w)]
                    self.restarts.append((time.time(), w))
                    self.start("mageflow", concurrency=concurrency, queues=queues)

        self._thread = threading.Thread(target=loop, name="worker-supervisor", daemon=True)
        self._thread.start()

    async def wait_ready(self, count: int, rdb: aioredis.Redis) -> set[int]:
        """Wait until ``count`` live worker processes announced themselves; their pids."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            announced = await rdb.smembers(f"mageflow-contract:{self.queue}:ready")
            pids = {int(p) for p in announced if pid_alive(int(p))}
            if len(pids) >= count:
                return pids
            await asyncio.sleep(0.05)
        tails = "\n---\n".join(f"{w.log}:\n{w.log_tail()}" for w in self.started)
        raise AssertionError(f"{count} workers not ready in {READY_TIMEOUT}s:\n{tails}")

    def logs(self) -> str:
        return "\n---\n".join(f"{w.log}:\n{w.log_tail()}" for w in self.started)

    def stop_all(self) -> None:
        """Stop the supervisor, then every worker (SIGTERM, SIGKILL after a grace)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        for worker in self.started:
            if not worker.killed:
                worker.stop()


MakeAppWorkers = Callable[..., AppWorkers]


@pytest.fixture(scope="session")
def make_app_workers(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeAppWorkers]:
    """``make_app_workers(idle_timeout=2.0, fault_dir=None)``: a new :class:`AppWorkers`
    (fresh queue and key prefix). Whatever its user did not stop is stopped at the end."""
    made: list[AppWorkers] = []

    def make(**options: object) -> AppWorkers:
        pool = AppWorkers(redis_url, tmp_path_factory.mktemp("workers"), **options)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop_all()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def running(
    redis_url: str, make_app_workers: MakeAppWorkers
) -> AsyncIterator[tuple[AppWorkers, mageflow.Mageflow, RedisProbe]]:
    """One ``mageflow worker`` serving the contract app (for the module), the client app
    (the contract tasks registered) and a probe on the same Redis."""
    pool = make_app_workers()
    pool.start("mageflow", concurrency=4)
    app = pool.client_app()
    contract_tasks.register(app)
    probe = RedisProbe(redis_url)
    rdb = aioredis.Redis.from_url(redis_url)
    try:
        await pool.wait_ready(1, rdb)
        yield pool, app, probe
    finally:
        pool.stop_all()
        await app.aclose()
        await probe.close()
        await rdb.aclose()
