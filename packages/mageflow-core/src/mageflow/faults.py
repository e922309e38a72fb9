"""Fault points for crash and outage tests: make a process fail exactly where a real one can.

A fault is armed by creating the file ``<dir>/<point>__<name>`` in the fault directory
(``MAGEFLOW_FAULT_DIR`` for subprocesses, or :func:`configure` in-process). Crash points
(:func:`check`): the first process to reach the point removes the file and dies — with
``os._exit(137)`` (as under ``kill -9``) when armed through the environment, else by
raising :class:`SimulatedCrash`, which in-process workers treat as the death of the
worker holding the message. Failure points (:func:`fail`): the file holds a count; each
pass consumes one and raises the transient error the point stands for. The environment
is read once, when this module is imported (the worker processes these tests start get
it at their start); unarmed, a check costs two attribute reads.
"""

from __future__ import annotations

import os
from pathlib import Path

AFTER_FINISH = "after-finish"
"""Worker: after the completion transition was stored, before its publishes."""
IN_TASK = "in-task"
"""Worker: inside the user code of the named task, where the task checks it (the contract
suite's ``contract.mortal``): the worker dies holding a started, unfinished delivery."""
AFTER_RUN = "after-run"
"""Client (name ``client``): after the ``run`` transition, before its publishes."""
AFTER_CLOSE = "after-close"
"""Client (name ``client``): after the ``close_swarm`` transition, before its publishes."""
PUBLISH = "publish"
"""Any process: a publish of the named task raises :class:`ConnectionError`."""
STORE = "store"
"""Worker, name ``start:<task>`` or ``finish:<task>``: that transition of a delivery of the
task meets an unreachable store (``StoreUnavailableError``) before reaching it."""

CLIENT = "client"

_dir: Path | None = None
_env_dir: Path | None = Path(_env) if (_env := os.environ.get("MAGEFLOW_FAULT_DIR")) else None


class SimulatedCrash(BaseException):
    """Raised at an armed crash point in-process; see the module docstring."""


def configure(directory: str | Path | None) -> None:
    """Use ``directory`` for fault files in this process (``None``: environment only)."""
    global _dir
    _dir = None if directory is None else Path(directory)


def configured() -> Path | None:
    """The directory set with :func:`configure`, if any."""
    return _dir


def active() -> bool:
    """Whether any fault can be armed in this process (a fault directory is set)."""
    return _dir is not None or _env_dir is not None


def arm(directory: str | Path, point: str, name: str, times: int = 1) -> Path:
    """Arm one fault (a failure point fires ``times`` times); returns its file."""
    path = Path(directory) / f"{point}__{name}"
    path.write_text(str(times))
    return path


def _armed(point: str, name: str) -> tuple[Path, bool] | None:
    hard = False
    directory = _dir
    if directory is None:
        if _env_dir is None:
            return None
        directory, hard = _env_dir, True
    path = directory / f"{point}__{name}"
    return (path, hard) if path.exists() else None


def check(point: str, name: str) -> None:
    """Die here if the crash point ``point`` is armed for ``name``."""
    armed = _armed(point, name)
    if armed is None:
        return
    path, hard = armed
    try:
        path.unlink()
    except FileNotFoundError:
        return  # another process took it
    if hard:
        os._exit(137)
    raise SimulatedCrash(f"{point} in {name}")


def fail(point: str, name: str) -> None:
    """Raise :class:`ConnectionError` if the failure point is armed for ``name``."""
    armed = _armed(point, name)
    if armed is None:
        return
    path, _ = armed
    try:
        left = int(path.read_text() or "1")
        if left <= 1:
            path.unlink()
        else:
            path.write_text(str(left - 1))
    except (FileNotFoundError, ValueError):
        return
    raise ConnectionError(f"injected fault: {point} of {name}")
