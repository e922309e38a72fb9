"""Worker subprocesses for an adapter's contract tests: start N, restart one that dies,
stop them all.

Each worker runs ``mageflow worker <app>`` (or any command) in its own process group with
the probe (``MAGEFLOW_PROBE_URL``: the contract tasks write to a :class:`RedisProbe`) and
the fault directory (``MAGEFLOW_FAULT_DIR``: armed crash points exit with 137) wired.
:func:`mageflow.testing.contract_tasks.register` announces every worker process on the
probe once it serves (``TaskBackend.worker_started``), which :meth:`WorkerPool.wait_ready`
waits for. A supervisor thread restarts a worker that exits on its own, as systemd or
Kubernetes would; :meth:`WorkerPool.stop` sends SIGTERM, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mageflow.testing.probe import Probe, get_probe

ENV_POOL = "MAGEFLOW_WORKER_POOL"
"""Probe namespace a worker process announces itself in (``ready`` events: its pid)."""
READY = "ready"


def worker_command(app: str, *, concurrency: int | None = None) -> list[str]:
    """``mageflow worker app`` run by this interpreter."""
    cmd = [sys.executable, "-m", "mageflow", "worker", app]
    return cmd + (["--concurrency", str(concurrency)] if concurrency else [])


@dataclass
class Worker:
    """One worker subprocess; its output goes to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False
    """Stopped (or killed) by the pool: not restarted."""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's process group (its children too), as ``kill -9``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL the group after ``grace`` seconds (or at once if exited)."""
        self.stopped = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.kill()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def report(self) -> str:
        return f"{self.log} (exit {self.proc.poll()}):\n{self.tail()}"


@dataclass
class WorkerPool:
    """``processes`` workers running ``command`` with ``env`` (over this environment).

    Use as a context manager (``with WorkerPool(...) as pool``: started and supervised,
    stopped on exit), then ``await pool.wait_ready(probe)``.
    """

    command: Sequence[str]
    log_dir: Path
    processes: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    probe_url: str | None = None
    """Set as ``MAGEFLOW_PROBE_URL``: the contract tasks and the announcements go there."""
    fault_dir: Path | None = None
    """Set as ``MAGEFLOW_FAULT_DIR`` (unset otherwise)."""
    cwd: Path | None = None
    grace: float = 10.0
    """Seconds a stopped worker has to exit after SIGTERM."""
    pool_id: str = field(default_factory=lambda: f"pool-{uuid.uuid4().hex[:12]}")
    workers: list[Worker] = field(default_factory=list)
    restarts: list[tuple[float, Worker]] = field(default_factory=list)
    """(when, the worker that died) for each restart the supervisor made."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def worker_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env, ENV_POOL: self.pool_id}
        env.pop("MAGEFLOW_FAULT_DIR", None)
        if self.probe_url is not None:
            env["MAGEFLOW_PROBE_URL"] = self.probe_url
        if self.fault_dir is not None:
            env["MAGEFLOW_FAULT_DIR"] = str(self.fault_dir)
        paths = [p for p in sys.path if p]  # the importable packages of this process
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def spawn(self) -> Worker:
        """Start one more worker."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            log = self.log_dir / f"worker-{len(self.workers)}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    list(self.command), cwd=self.cwd, env=self.worker_env(), stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            worker = Worker(proc, log)
            self.workers.append(worker)
        return worker

    def start(self) -> None:
        """Start the workers and the supervisor."""
        for _ in range(self.processes):
            self.spawn()
        self._thread = threading.Thread(target=self._supervise, name="mageflow-supervisor")
        self._thread.daemon = True
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                dead = [w for w in self.workers if not w.stopped and not w.alive()]
                for w in dead:
                    w.stopped = True  # replaced below
                    self.restarts.append((time.time(), w))
            for w in dead:
                w.kill()  # children it left
                if not self._stopping.is_set():
                    self.spawn()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.stopped and w.alive()]

    async def wait_ready(self, probe: Probe, count: int | None = None, timeout: float = 60) -> None:
        """Wait until ``count`` (default: ``processes``) live worker processes announced
        on ``probe`` that they serve. Raises ``AssertionError`` with the logs on timeout."""
        want = self.processes if count is None else count

        async def ready() -> bool:
            pids = {int(p) for p in await probe.events(self.pool_id, READY)}
            return len({p for p in pids if pid_alive(p)}) >= want

        try:
            await probe.wait_until(ready, timeout, f"{want} worker(s) of {self.command}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        """The last lines of every worker's output, for failure messages."""
        return "\n---\n".join(map(Worker.report, self.workers))

    def stop(self) -> None:
        """Stop the supervisor (no more restarts), then every worker."""
        self._stopping.set()
        supervisor, self._thread = self._thread, None
        if supervisor is not None:
            supervisor.join()
        for w in self.workers:
            w.stop(self.grace)

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def announce_worker() -> None:
    """Record this worker process on the probe (``MAGEFLOW_WORKER_POOL``), from its loop:
    a worker-start hook :func:`~mageflow.testing.contract_tasks.register` installs."""
    pool = os.environ.get(ENV_POOL)
    if pool:
        task = asyncio.get_running_loop().create_task(get_probe().record(pool, READY, os.getpid()))
        _announcing.add(task)
        task.add_done_callback(_announcing.discard)


_announcing: set[asyncio.Task[None]] = set()
