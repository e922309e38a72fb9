"""Fixtures for the Hatchet backend tests: real worker processes against a Hatchet server.

The server is the in-process :class:`HatchetTestEngine` (one per test module, ephemeral
ports) or, for the real-engine tier, a real Hatchet. Workers are ``mageflow worker
tests.hatchet.contract_app:mf`` and ``python tests/hatchet/contract_app.py`` subprocesses
(:class:`~mageflow_hatchet.testing.WorkerProcess`: own process group, empty cwd, SIGTERM
then SIGKILL on teardown) sharing the test's Redis store through ``MAGEFLOW_REDIS_URL`` and
a unique ``MAGEFLOW_KEY_PREFIX``. A supervisor thread replaces a worker that exits on its
own (the crash test kills one), as systemd or Kubernetes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from mageflow import Mageflow
from mageflow.testing import contract_tasks
from mageflow.testing.contract import ContractHarness
from mageflow.testing.probe import RedisProbe
from mageflow_hatchet.backend import HatchetBackend
from mageflow_hatchet.testing import HatchetTestEngine, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.hatchet.contract_app"
APP_PATH = Path(__file__).resolve().parent / "contract_app.py"
STOP_GRACE = 5.0
READY_TIMEOUT = 90.0
"""As the test engine's own default: a loaded 2-core machine took over 60 s to start the
SDK in a worker (adapter_range on 3.10, load average 10); only a failure waits that long."""
HEARTBEAT_TIMEOUT = 6.0
"""Seconds without a heartbeat after which the test engine re-queues a worker's runs. The
SDK sends one every 4 s, so anything shorter would also take runs from healthy workers."""


class CancelLandingBackend(HatchetBackend):
    """The hatchet backend whose ``cancel`` also lets the cancellation reach the worker.

    Hatchet cancels asynchronously: the REST call returns once the server has cancelled
    the run, and the worker hears of it over its action stream a moment later (measured
    on the test engine: median 0.3 ms, but up to 100 ms on a loaded machine). The
    contract's interrupt test releases the blocked task right after ``interrupt()``
    returns, so a late cancellation lets it finish first. The harness waits ``landing``
    seconds after each cancel, as a caller who needs the task stopped would.
    """

    def __init__(self, hatchet: Any, *, landing: float) -> None:
        super().__init__(hatchet)
        self.landing = landing

    async def cancel(self, run_ids: Any) -> None:
        await super().cancel(run_ids)
        await asyncio.sleep(self.landing)


class Server(Protocol):
    """What :class:`WorkerProcess` needs of a Hatchet server (the test engine has it)."""

    def client_env(self) -> dict[str, str]: ...

    def wait_for_worker(self, name: str, timeout: float = 30.0) -> Any: ...


def mageflow_script() -> Path:
    """The ``mageflow`` console script (it has the ``__main__`` guard that the Hatchet
    worker's spawned listener process needs; ``python -m mageflow`` cannot be used by
    :class:`WorkerProcess`, which runs a script by path)."""
    found = Path(sys.executable).with_name("mageflow")
    if not found.exists():
        which = shutil.which("mageflow")
        assert which, "the `mageflow` console script is not installed"
        found = Path(which)
    return found


@dataclass
class Spawned:
    proc: WorkerProcess
    name: str
    kind: str
    slots: int
    replaced: bool = False


@dataclass
class WorkerPool:
    """Worker processes of ``contract_app`` for one harness; see the module docstring.

    ``kinds`` lists the workers: ``"cli"`` runs ``mageflow worker APP:mf``, ``"script"``
    runs ``contract_app.py``, whose ``__main__`` block calls ``mf.run_worker()``.
    """

    server: Server
    env: Mapping[str, str]
    kinds: tuple[str, ...] = ("cli", "script")
    slots: int = 3
    namespace: str = ""
    """The Hatchet namespace of the workers (``adapter_``): it prefixes their names."""
    workers: list[Spawned] = field(default_factory=list)
    restarts: list[tuple[float, Spawned]] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _spawn(self, kind: str) -> Spawned:
        base, _, queue = kind.partition(":")  # "cli:<queue>": serves only that queue
        tag = f"{base}-{queue}" if queue else base
        name = f"contract-{tag}-{uuid.uuid4().hex[:8]}"  # namespace + name on the server
        if base == "cli":
            script = mageflow_script()
            args: tuple[str, ...] = ("worker", f"{APP}:mf", "--concurrency", str(self.slots))
            args += ("--queues", queue) if queue else ()
        else:
            script, args = APP_PATH, ()
        env = {**self.env, "CONTRACT_WORKER_NAME": name, "CONTRACT_WORKER_SLOTS": str(self.slots)}
        proc = WorkerProcess(self.server, script, *args, env=env)  # type: ignore[arg-type]
        proc.start()
        spawned = Spawned(proc, self.namespace + name, kind, self.slots)
        self.workers.append(spawned)
        return spawned

    def start(self) -> None:
        with self._lock:
            for kind in self.kinds:
                self._spawn(kind)
        for w in list(self.workers):
            w.proc.wait_registered(w.name, timeout=READY_TIMEOUT)
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                for w in list(self.workers):
                    if not w.replaced and w.proc.returncode is not None:
                        w.replaced = True
                        self.restarts.append((time.time(), w))
                        if not self._stopping.is_set():
                            self._spawn(w.kind)

    @property
    def total_slots(self) -> int:
        return sum(":" not in kind for kind in self.kinds) * self.slots

    def logs(self) -> str:
        return "\n---\n".join(f"[{w.name}]\n{w.proc.output()[-3000:]}" for w in self.workers)

    def stop(self) -> None:
        """SIGTERM every worker (the SDK's graceful stop), SIGKILL each process group that
        has not exited within ``STOP_GRACE`` seconds, then remove their temp dirs."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for w in self.workers:
                w.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            for w in self.workers:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            for w in self.workers:
                w.proc.cleanup()  # kills the group (the listener child too)


def worker_env(redis_url: str, prefix: str, fault_dir: Path | None) -> dict[str, str]:
    env = {
        "MAGEFLOW_BACKEND": "hatchet",
        "MAGEFLOW_REDIS_URL": redis_url,
        "MAGEFLOW_KEY_PREFIX": prefix,
        "MAGEFLOW_PROBE_URL": redis_url,
        "MAGEFLOW_RESEND_AFTER": os.environ.get("MAGEFLOW_RESEND_AFTER", "1"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if fault_dir is not None:
        env["MAGEFLOW_FAULT_DIR"] = str(fault_dir)
    return env


@contextlib.asynccontextmanager
async def contract_harness(
    server: Server,
    hatchet: Any,
    redis_url: str,
    fault_dir: Path,
    *,
    timeout: float = 30.0,
    cancel_landing: float = 0.3,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[ContractHarness]:
    """Workers serving the contract tasks on ``server`` and the client ``Mageflow`` whose
    Hatchet client is ``hatchet``, all on one Redis key prefix."""
    os.environ.pop("MAGEFLOW_FAULT_DIR", None)  # only the workers may crash
    prefix = f"mf-h-{uuid.uuid4().hex[:10]}"
    env = {**worker_env(redis_url, prefix, fault_dir), **(extra_env or {})}
    routed = tuple(f"cli:{q}" for q in contract_tasks.ROUTED_QUEUES)  # one worker each
    pool = WorkerPool(server, env, kinds=(*WorkerPool.kinds, *routed))
    backend = CancelLandingBackend(hatchet, landing=cancel_landing)
    app = Mageflow(backend=backend, redis_url=redis_url, key_prefix=prefix)
    contract_tasks.register(app)
    probe = RedisProbe(redis_url)
    try:
        await asyncio.to_thread(pool.start)
        yield ContractHarness(
            app=app,
            probe=probe,
            fault_dir=fault_dir,
            # the engine re-queues the runs of a worker silent this long; the SDK's
            # heartbeats renew the claim of a live one
            redelivery_lease=HEARTBEAT_TIMEOUT,
            timeout=timeout,
            settle=0.3,
            worker_slots=pool.total_slots,
            routed_queues=contract_tasks.ROUTED_QUEUES,
        )
    finally:
        await asyncio.to_thread(pool.stop)
        for when, w in pool.restarts:
            code = w.proc.returncode
            print(f"\n[hatchet] supervisor replaced {w.name} (exit {code}) at {when:.2f}")
        await app.aclose()
        await probe.close()


@pytest.fixture(scope="module")
def engine() -> Iterator[HatchetTestEngine]:
    """A Hatchet test engine for one test module (its own ports: xdist-safe)."""
    with HatchetTestEngine(heartbeat_timeout=HEARTBEAT_TIMEOUT) as eng:
        yield eng
