"""Fixtures for the Hatchet test engine tests: the engine, clients and worker subprocesses."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

try:
    import mageflow_hatchet_testengine  # noqa: F401
except ImportError:  # workspace packages not installed into the venv: use the source tree
    sys.path.insert(
        0, str(Path(__file__).resolve().parents[2] / "packages/mageflow-hatchet-testengine/src")
    )

from mageflow_hatchet_testengine import HatchetTestEngine, WorkerProcess
from mageflow_hatchet_testengine.pytest_plugin import hatchet_client, hatchet_engine

__all__ = ["hatchet_client", "hatchet_engine"]

APP_PATH = Path(__file__).resolve().parent / "engine_test_app.py"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hatchet_engine_test_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_APP = _load_app()


@pytest.fixture(scope="session")
def app() -> ModuleType:
    """The ``engine_test_app`` module: task names, input models and :func:`build_tasks`."""
    return _APP


StartWorker = Callable[..., tuple[WorkerProcess, str]]


@pytest.fixture
def start_worker(hatchet_engine: HatchetTestEngine) -> Iterator[StartWorker]:
    """Start worker subprocesses for one test; all are stopped (and killed) afterwards.

    ``start_worker(*task_names, slots=4, engine=None)`` returns ``(process, worker_name)``
    once the worker is registered with an open action stream.
    """
    started: list[WorkerProcess] = []

    def start(
        *tasks: str, slots: int = 4, engine: HatchetTestEngine | None = None
    ) -> tuple[WorkerProcess, str]:
        target = engine or hatchet_engine
        name = f"test-worker-{uuid.uuid4().hex[:8]}"
        proc = WorkerProcess(
            target, APP_PATH, "--name", name, "--slots", str(slots), "--tasks", ",".join(tasks)
        )
        started.append(proc)
        proc.start()
        proc.wait_registered(name, timeout=90)
        return proc, name

    yield start
    for proc in started:
        proc.terminate(timeout=5)
        proc.cleanup()


@pytest.fixture(scope="module")
def main_worker(hatchet_engine: HatchetTestEngine) -> Iterator[str]:
    """One worker (4 slots) serving every task but the slot probe, for a whole module."""
    name = f"main-worker-{uuid.uuid4().hex[:8]}"
    tasks = [_APP.ECHO, _APP.FLAKY, _APP.FATAL, _APP.SLEEPER, _APP.SLOW_TIMEOUT, _APP.DAG]
    proc = WorkerProcess(
        hatchet_engine, APP_PATH, "--name", name, "--slots", "4", "--tasks", ",".join(tasks)
    )
    try:
        proc.start()
        proc.wait_registered(name, timeout=90)
        yield name
    finally:
        proc.terminate(timeout=5)
        proc.cleanup()


@pytest.fixture
def tasks(hatchet_client: Any) -> dict[str, Any]:
    """The test tasks, defined on this test's own Hatchet client."""
    return dict(_APP.build_tasks(hatchet_client))
