"""What a running task knows about itself: :func:`mageflow.current_task`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskContext(BaseModel):
    """The signature a task is running for, read inside the task with
    ``mageflow.current_task()``. Immutable."""

    model_config = ConfigDict(frozen=True)

    key: str
    """The signature key (``mageflow.load(key)``, ``mageflow status KEY``)."""
    task_name: str
    identifiers: dict[str, Any] = Field(default_factory=dict)
    """The signature's ``task_identifiers``, as given to ``sign`` (types kept)."""
    attempt: int
    """1 for the first attempt, 2 for the first retry, ... (counted by the engine)."""
    run_id: str
    """The task manager's run id of this delivery."""
