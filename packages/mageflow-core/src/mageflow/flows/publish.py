"""Publishing what a transition dispatched, retried with backoff on transient errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import stamina

from mageflow import faults
from mageflow.backend.base import HEADER_KEY, OutgoingTask
from mageflow.engine import Publish
from mageflow.errors import MageflowError, PublishError, StoreUnavailableError

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime

log = logging.getLogger("mageflow.publish")

ATTEMPTS = 6
"""Publish attempts before giving up (about 3 s of backoff in all)."""


def _transient(exc: Exception) -> bool:
    """Errors worth retrying: anything the task manager's client raises, but not our own
    typed errors (unknown task, bad payload), which another attempt cannot fix."""
    return not isinstance(exc, MageflowError) or isinstance(exc, StoreUnavailableError)


async def publish(rt: Runtime, publishes: Sequence[Publish]) -> None:
    """Send ``publishes`` through the backend. Raises :class:`PublishError` when the task
    manager keeps refusing; the engine recorded every dispatch, so the reconciler sends
    them later and nothing is lost."""
    if not publishes:
        return
    await rt.ensure_started()
    tasks = [OutgoingTask(p.task_name, p.payload, {HEADER_KEY: p.key}) for p in publishes]
    try:
        async for attempt in stamina.retry_context(
            on=_transient, attempts=ATTEMPTS, wait_initial=0.05, wait_max=1.0, timeout=None
        ):
            with attempt:
                for p in publishes:
                    faults.fail(faults.PUBLISH, p.task_name)
                await rt.backend.publish_many(tasks)
    except MageflowError:
        raise
    except Exception as exc:
        raise PublishError(
            f"could not publish {len(tasks)} task(s) ({tasks[0].task_name} ...) after "
            f"{ATTEMPTS} attempts: {exc!r}. They are recorded; the reconciler sends them "
            "once the task manager is reachable (any worker, or `mageflow reconcile`)."
        ) from exc
