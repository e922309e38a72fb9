"""Creating workflow runs: now (``trigger``) or at wall-clock times (``schedule``).

A run gets one task run per task of its workflow (a standalone task's has the run's own
external id); the tasks without DAG parents are queued at once, the others wait.
"""

from __future__ import annotations

import uuid

from mageflow_hatchet_testengine.errors import InvalidRequestError, found
from mageflow_hatchet_testengine.state import (
    ScheduledTrigger,
    TaskRun,
    TaskState,
    TriggerSpec,
    WorkflowRun,
    now_wall,
)
from mageflow_hatchet_testengine.task_assignment import TaskAssignment

MIN_PRIORITY = 1
MAX_PRIORITY = 3


class RunTriggers(TaskAssignment):
    """Validating trigger specs, creating runs and their task runs, queueing the roots."""

    def _new_run(self, spec: TriggerSpec) -> WorkflowRun:
        workflow = found(
            self._workflows.get(spec.workflow_name), f"workflow {spec.workflow_name!r}"
        )
        priority = workflow.default_priority if spec.priority is None else spec.priority
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidRequestError(
                f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
            )
        run = WorkflowRun(
            external_id=str(uuid.uuid4()),
            workflow=workflow,
            input=spec.input,
            additional_metadata=spec.additional_metadata,
            priority=priority,
            created_at=now_wall(),
            parent_workflow_run_id=spec.parent_workflow_run_id,
            parent_task_run_id=spec.parent_task_run_id,
            child_index=spec.child_index,
            child_key=spec.child_key,
        )
        return run

    def _start_run(self, run: WorkflowRun) -> None:
        self._runs[run.external_id] = run
        single = len(run.workflow.tasks) == 1
        for definition in run.workflow.tasks.values():
            # Like Hatchet v1, a standalone task's external id is its run's id.
            task = TaskRun(
                external_id=run.external_id if single else str(uuid.uuid4()),
                definition=definition,
                run=run,
                state=TaskState.WAITING,
                created_at=now_wall(),
                numeric_id=next(self._task_numbers),
            )
            run.tasks[definition.readable_id] = task
            self._tasks[task.external_id] = task
        for task in run.tasks.values():
            if not task.definition.parents:
                self._enqueue(task, delay=0.0)

    def trigger(self, specs: list[TriggerSpec]) -> list[str]:
        """Create one run per spec (all or nothing) and queue their root tasks."""
        with self._lock:
            runs = [self._new_run(spec) for spec in specs]
            for run in runs:
                self._start_run(run)
            self._assign()
            self._notify()
            return [run.external_id for run in runs]

    def schedule(self, spec: TriggerSpec, at_wall: list[float]) -> list[str]:
        """Create runs of ``spec`` at the given wall-clock times."""
        with self._lock:
            self._new_run(spec)  # validate now, as the real engine does
            ids: list[str] = []
            for at in at_wall:
                scheduled = ScheduledTrigger(str(uuid.uuid4()), spec, at)
                self._scheduled[scheduled.scheduled_id] = scheduled
                ids.append(scheduled.scheduled_id)
            self._notify()
            return ids
