"""Fault points for crash tests: make a worker die exactly where a real one can.

A fault is armed by creating the file ``<dir>/<point>__<task-name>`` in the fault
directory (``MAGEFLOW_FAULT_DIR`` for worker subprocesses, or :func:`configure`
in-process). The first worker to reach that point for that task removes the file and
dies: with ``os._exit(137)`` (as under ``kill -9``) when ``hard`` is true, else by raising
:class:`SimulatedCrash`, which the ``local`` backend treats as the death of the worker
holding the message. Unarmed, a check costs one ``os.environ`` lookup.
"""

from __future__ import annotations

import os
from pathlib import Path

AFTER_FINISH = "after-finish"
"""After the completion transition was stored, before what it implies is published."""

_dir: Path | None = None


class SimulatedCrash(BaseException):
    """Raised at an armed fault point in-process; see the module docstring."""


def configure(directory: str | Path | None) -> None:
    """Use ``directory`` for fault files in this process (``None``: environment only)."""
    global _dir
    _dir = None if directory is None else Path(directory)


def arm(directory: str | Path, point: str, task_name: str) -> Path:
    """Arm one fault; returns the file that does it."""
    path = Path(directory) / f"{point}__{task_name}"
    path.write_text("armed")
    return path


def check(point: str, task_name: str, *, hard: bool) -> None:
    directory = _dir
    if directory is None:
        env = os.environ.get("MAGEFLOW_FAULT_DIR")
        if not env:
            return
        directory = Path(env)
    try:
        (directory / f"{point}__{task_name}").unlink()
    except FileNotFoundError:
        return
    if hard:
        os._exit(137)
    raise SimulatedCrash(f"{point} in {task_name}")
