"""Read-only access to the scheduler's records: live records for callers that hold
:attr:`~SchedulerViews.lock`, frozen :mod:`~mageflow_hatchet_testengine.snapshots` for
everyone else, and waiting for a condition on them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mageflow_hatchet_testengine import snapshots
from mageflow_hatchet_testengine.errors import found
from mageflow_hatchet_testengine.scheduler_base import SchedulerBase
from mageflow_hatchet_testengine.state import (
    LogRecord,
    TaskRun,
    WorkerRecord,
    WorkflowDef,
    WorkflowRun,
)


class SchedulerViews(SchedulerBase):
    """Lookups, snapshots and :meth:`wait_until`; nothing here changes engine state."""

    def workflow(self, name: str) -> WorkflowDef:
        with self._lock:
            return found(self._workflows.get(name), f"workflow {name!r}")

    def workflow_names(self) -> list[str]:
        with self._lock:
            return list(self._workflows)

    def get_run(self, run_id: str) -> WorkflowRun:
        """The live run record; only read it while holding :attr:`lock`."""
        return found(self._runs.get(run_id), f"workflow run {run_id}")

    def find_worker(self, worker_id: str) -> WorkerRecord:
        """The live worker record; only read it while holding :attr:`lock`."""
        return self._worker(worker_id)

    def find_task(self, task_run_id: str) -> TaskRun:
        """The live task run record; only read it while holding :attr:`lock`."""
        return self._task(task_run_id)

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def runs(self) -> list[snapshots.RunInfo]:
        with self._lock:
            return [snapshots.run_info(r) for r in self._runs.values()]

    def run(self, run_id: str) -> snapshots.RunInfo:
        with self._lock:
            return snapshots.run_info(self.get_run(run_id))

    def workers(self) -> list[snapshots.WorkerInfo]:
        with self._lock:
            return [snapshots.worker_info(w) for w in self._workers.values()]

    def logs(self, task_run_id: str | None = None) -> list[snapshots.LogLine]:
        with self._lock:
            records: list[LogRecord] = list(self._orphan_logs)
            for task in self._tasks.values():
                records.extend(task.logs)
            if task_run_id is not None:
                records = [r for r in records if r.task_run_id == task_run_id]
            records.sort(key=lambda r: r.created_at)
            return [snapshots.log_line(r) for r in records]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (evaluated under the lock) is true, or time out."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)
