"""Fault points for crash tests: make a worker die exactly where a real one can.

Armed in-process with :func:`arm`, or for worker subprocesses with the environment
variable ``MAGEFLOW_FAULT=<point>:<task-name>[:<marker-file>]``. A fault fires once: in
``exit`` mode the process dies with ``os._exit(137)`` (as under ``kill -9``) after
creating the marker file, so a restarted worker does not die again.
"""

from __future__ import annotations

import os
from pathlib import Path

AFTER_FINISH = "after-finish"
"""After the completion transition was stored, before what it implies is published."""


class SimulatedCrash(BaseException):
    """Raised in-process at an armed fault point; the ``local`` backend treats it as the
    death of the worker holding the message and redelivers that message."""


_armed: dict[tuple[str, str], bool] = {}


def arm(point: str, task_name: str) -> None:
    _armed[(point, task_name)] = True


def check(point: str, task_name: str) -> None:
    if _armed.pop((point, task_name), False):
        raise SimulatedCrash(f"{point} in {task_name}")
    spec = os.environ.get("MAGEFLOW_FAULT")
    if not spec:
        return
    parts = spec.split(":", 2)
    if len(parts) < 2 or (parts[0], parts[1]) != (point, task_name):
        return
    marker = Path(parts[2]) if len(parts) == 3 else None
    if marker is not None:
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
    os._exit(137)
