"""Publishing what a transition dispatched, retried with backoff on transient errors."""

from __future__ import annotations

import logging
import time
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
"""Publish attempts after a first failure before giving up (about 3 s of backoff)."""


def _transient(exc: Exception) -> bool:
    """Errors worth retrying: anything the task manager's client raises, but not our own
    typed errors (unknown task, bad payload), which another attempt cannot fix."""
    return not isinstance(exc, MageflowError) or isinstance(exc, StoreUnavailableError)


def outgoing(p: Publish) -> OutgoingTask:
    """The message for ``p``: a priority where it has one, a delay where the task manager
    holds it (counted from now: a re-send after its time runs at once)."""
    delay = None
    if p.not_before_ms is not None:
        delay = max(p.not_before_ms / 1000 - time.time(), 0.0) or None
    return OutgoingTask(p.task_name, p.payload, {HEADER_KEY: p.key}, p.priority, delay, p.queue)


async def _send(rt: Runtime, publishes: Sequence[Publish], tasks: list[OutgoingTask]) -> None:
    for p in publishes:
        faults.fail(faults.PUBLISH, p.task_name)
    await rt.ensure_started()  # retried with the publish: the broker may be down at first
    await rt.backend.publish_many(tasks)


async def publish(rt: Runtime, publishes: Sequence[Publish]) -> None:
    """Send ``publishes`` through the backend. Raises :class:`PublishError` when the task
    manager keeps refusing; the engine recorded every dispatch, so the reconciler sends
    them later and nothing is lost."""
    if not publishes:
        return
    tasks = [outgoing(p) for p in publishes]
    try:
        # the common case costs one call; the retry machinery only starts on a failure
        await _send(rt, publishes, tasks)
        return
    except Exception as exc:
        if not _transient(exc):
            raise
        log.warning("publishing %s failed (%r); retrying", tasks[0].task_name, exc)
    try:
        async for attempt in stamina.retry_context(
            on=_transient, attempts=ATTEMPTS, wait_initial=0.05, wait_max=1.0, timeout=None
        ):
            with attempt:
                await _send(rt, publishes, tasks)
    except MageflowError:
        raise
    except Exception as exc:
        raise PublishError(
            f"could not publish {len(tasks)} task(s) ({tasks[0].task_name} ...) after "
            f"{ATTEMPTS} attempts: {exc!r}. They are recorded; the reconciler sends them "
            "once the task manager is reachable (any worker, or `mageflow reconcile`)."
        ) from exc


async def start_backend(rt: Runtime) -> None:
    """Start the backend before a client's first transition, retrying a transient error
    (the broker not reachable yet) like a publish. Raises :class:`PublishError` when it
    keeps failing; nothing was recorded yet, so the call can simply be made again."""
    try:
        await rt.ensure_started()
        return
    except Exception as exc:
        if not _transient(exc):
            raise
        log.warning("starting the backend failed (%r); retrying", exc)
    try:
        async for attempt in stamina.retry_context(
            on=_transient, attempts=ATTEMPTS, wait_initial=0.05, wait_max=1.0, timeout=None
        ):
            with attempt:
                await rt.ensure_started()
    except MageflowError:
        raise
    except Exception as exc:
        raise PublishError(
            f"could not reach the task manager after {ATTEMPTS} attempts: {exc!r}; "
            "nothing was run, try again once it is reachable"
        ) from exc
