"""What every part of the :class:`~mageflow_hatchet_testengine.scheduler.Scheduler` shares:
the record tables, the one re-entrant lock (and its change condition), the clock, the
counters, and the lookups that raise :class:`NotFoundError`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from mageflow_hatchet_testengine.errors import found
from mageflow_hatchet_testengine.state import (
    LogRecord,
    RunSubscriber,
    ScheduledTrigger,
    TaskEvent,
    TaskRun,
    WorkerRecord,
    WorkflowDef,
    WorkflowRun,
    now_wall,
)


class SchedulerBase:
    """All engine state; the scheduler's parts subclass it and move it under ``_lock``."""

    def __init__(
        self,
        tenant_id: str,
        *,
        heartbeat_timeout: float,
        max_reassigns: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant_id = tenant_id
        self.heartbeat_timeout = heartbeat_timeout
        self.max_reassigns = max_reassigns
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._workflows: dict[str, WorkflowDef] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._runs: dict[str, WorkflowRun] = {}
        self._tasks: dict[str, TaskRun] = {}
        self._queued: dict[str, TaskRun] = {}
        self._subscribers: dict[str, set[RunSubscriber]] = {}
        self._scheduled: dict[str, ScheduledTrigger] = {}
        self._orphan_logs: list[LogRecord] = []
        self._seq = itertools.count()
        self._event_ids = itertools.count(1)
        self._task_numbers = itertools.count(1)

    def _notify(self) -> None:
        self._changed.notify_all()

    def _event(self, task: TaskRun, event_type: str, message: str = "", **kw: Any) -> None:
        task.events.append(
            TaskEvent(
                event_id=next(self._event_ids),
                timestamp=now_wall(),
                event_type=event_type,
                message=message,
                retry_count=task.retry_count,
                **kw,
            )
        )

    def _worker(self, worker_id: str) -> WorkerRecord:
        return found(self._workers.get(worker_id), f"worker {worker_id}")

    def _task(self, task_run_id: str) -> TaskRun:
        return found(self._tasks.get(task_run_id), f"task run {task_run_id}")
