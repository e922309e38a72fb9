"""pytest plugin (entry point ``pytest11``): run your own workflows for real in tests.

By default each test that uses ``mageflow_run`` runs your ``Mageflow`` instance on the
embedded default — the in-process ``local`` backend and a fresh in-memory store — so
your tasks, callbacks, chains and swarms execute for real with no servers. Override the
``mageflow_app`` fixture to return your instance (default: the process's default
instance). ``pytest --mageflow-backend=configured`` keeps the instance as configured (e.g.
Taskiq or Hatchet with workers you started) to run the same tests against it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mageflow.app import Mageflow, default_instance
from mageflow.backend.local import LocalBackend
from mageflow.flows.handles import Signature
from mageflow.models.events import WorkflowEvent
from mageflow.plugins.hookspecs import hookimpl
from mageflow.plugins.manager import register_observer, unregister_observer
from mageflow.store.memory import MemoryStore


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mageflow")
    group.addoption(
        "--mageflow-backend",
        choices=("local", "configured"),
        default="local",
        help="local: run workflows in-process on a fresh in-memory store (default); "
        "configured: use the app's own backend and store (workers must be running).",
    )


@dataclass
class TaskRecorder:
    """What ran in this test, from MageFlow's observer hooks."""

    events: list[WorkflowEvent] = field(default_factory=list)
    by_name: dict[str, list[WorkflowEvent]] = field(default_factory=lambda: defaultdict(list))

    def _add(self, event: WorkflowEvent) -> None:
        self.events.append(event)
        self.by_name[event.name].append(event)

    @hookimpl
    def mageflow_task_started(self, event: WorkflowEvent) -> None:
        self._add(event)

    @hookimpl
    def mageflow_task_succeeded(self, event: WorkflowEvent) -> None:
        self._add(event)

    @hookimpl
    def mageflow_task_failed(self, event: WorkflowEvent) -> None:
        self._add(event)

    @hookimpl
    def mageflow_task_retried(self, event: WorkflowEvent) -> None:
        self._add(event)

    @hookimpl
    def mageflow_workflow_finished(self, event: WorkflowEvent) -> None:
        self._add(event)

    def names(self) -> list[str]:
        """Task names in the order they started (one entry per attempt)."""
        return [e.task_name or "" for e in self.by_name["task_started"]]

    def count(self, task_name: str, *, what: str = "task_succeeded") -> int:
        return sum(1 for e in self.by_name[what] if e.task_name == task_name)

    def failures(self, task_name: str | None = None) -> list[dict[str, Any]]:
        return [
            e.error or {}
            for e in self.by_name["task_failed"]
            if task_name is None or e.task_name == task_name
        ]


@dataclass
class WorkflowTestRun:
    """Handed to a test by the ``mageflow_run`` fixture."""

    app: Mageflow
    ran: TaskRecorder

    async def wait(self, sig: Signature, timeout: float = 10.0) -> Any:
        """The workflow's result (raises ``TaskFailedError`` if it failed)."""
        return await sig.wait(timeout=timeout)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is running or queued anymore (callbacks included). Only on
        the local backend; with a configured backend, wait on a signature instead."""
        if isinstance(self.app.backend, LocalBackend):
            await self.app.backend.join(timeout)


@pytest.fixture
def mageflow_app() -> Mageflow:
    """Your Mageflow instance; override it in your conftest.py."""
    return default_instance()


async def _mageflow_run(
    request: pytest.FixtureRequest, mageflow_app: Mageflow
) -> AsyncIterator[WorkflowTestRun]:
    """Run ``mageflow_app`` for real in this test; see the module docstring."""
    recorder = TaskRecorder()
    register_observer(recorder)
    local = request.config.getoption("--mageflow-backend") == "local"
    previous = mageflow_app.use(LocalBackend(workers=2), MemoryStore()) if local else None
    try:
        yield WorkflowTestRun(mageflow_app, recorder)
    finally:
        unregister_observer(recorder)
        if previous is not None:
            await mageflow_app.backend.shutdown()
            mageflow_app.use(*previous)


try:
    import pytest_asyncio
except ImportError:  # the fixture needs an async test runner

    @pytest.fixture(name="mageflow_run")
    def _mageflow_run_unavailable() -> None:
        raise pytest.UsageError(
            "the mageflow_run fixture needs pytest-asyncio: pip install 'mageflow-core[pytest]'"
        )

else:
    mageflow_run = pytest_asyncio.fixture(_mageflow_run, name="mageflow_run")
