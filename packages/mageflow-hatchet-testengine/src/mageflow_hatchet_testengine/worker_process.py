"""Run a Hatchet worker script as a subprocess against a :class:`HatchetTestEngine`.

A Hatchet worker must own its process: it installs signal handlers, runs its own event
loop and spawns (multiprocessing "spawn") an action-listener child process. So the worker
script needs an ``if __name__ == "__main__":`` guard and must be importable by path.

The subprocess runs in its own session (process group), from a fresh empty working
directory (the SDK reads ``.env*`` files from the cwd), with the engine's
:meth:`~HatchetTestEngine.client_env` and without any inherited ``HATCHET_CLIENT_*``
variable. :meth:`WorkerProcess.terminate` sends SIGTERM (the SDK's graceful stop), then
SIGKILLs the whole process group if it has not exited in time. POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from mageflow_hatchet_testengine.engine import HatchetTestEngine
    from mageflow_hatchet_testengine.snapshots import WorkerInfo


class WorkerProcess:
    """A worker script (``python script *args``) running against ``engine``.

    :param cwd: working directory; default: a new empty temporary directory.
    :param env: extra environment variables, applied last.
    """

    def __init__(
        self,
        engine: HatchetTestEngine,
        script: str | os.PathLike[str],
        *args: str,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self._engine = engine
        self._argv = [python, str(Path(script).resolve()), *args]
        self._cwd = Path(cwd) if cwd is not None else None
        self._extra_env = dict(env or {})
        self._tmpdir: Path | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> WorkerProcess:
        """Start the subprocess. Returns ``self``."""
        if self._proc is not None:
            raise RuntimeError("worker process already started")
        self._tmpdir = Path(tempfile.mkdtemp(prefix="hatchet-test-worker-"))
        cwd = self._cwd or self._tmpdir / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_CLIENT_")}
        env.update(self._engine.client_env())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._extra_env)
        self._log_path = self._tmpdir / "worker.log"
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            self._argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("worker process not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def output(self) -> str:
        """Everything the worker wrote to stdout and stderr so far."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def wait_registered(self, worker_name: str, timeout: float = 90.0) -> WorkerInfo:
        """Block until the engine sees ``worker_name`` registered with an open action stream.

        :raises RuntimeError: the process exited first (its output is in the message).
        :raises TimeoutError: not registered within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            code = self.returncode
            if code is not None:
                raise RuntimeError(
                    f"worker process exited with code {code} before registering:\n" + self.output()
                )
            try:
                return self._engine.wait_for_worker(worker_name, timeout=0.2)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"worker {worker_name!r} did not register within {timeout}s:\n"
                        + self.output()
                    ) from None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's main process only."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the main process to exit; its code or None."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group (worker, listener child, helpers)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """Graceful stop: SIGTERM, wait up to ``timeout`` s, then SIGKILL the group.

        Always leaves no process of the group behind. Returns the main process's exit code.
        """
        if self._proc is None:
            return None
        self.send_signal(signal.SIGTERM)
        self.wait(timeout)
        self.kill()
        self._close()
        return self._proc.returncode

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Kill everything that is left and remove the temporary directory."""
        self.kill()
        self._close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()
        self.cleanup()
