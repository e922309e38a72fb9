"""The ``local`` backend's own behaviour beyond the contract suite: draining, stopping,
retry backoff."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mageflow import Backoff, Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.errors import ConfigurationError


def app_with_a_stuck_task() -> tuple[Mageflow, LocalBackend, asyncio.Event, asyncio.Event]:
    backend = LocalBackend()
    mf = Mageflow(backend=backend, redis_url="memory://")
    started, cancelled = asyncio.Event(), asyncio.Event()

    @mf.task("stuck")
    async def stuck(message: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return mf, backend, started, cancelled


async def test_join_timeout_raises_builtin_timeout_error() -> None:
    mf, backend, started, _ = app_with_a_stuck_task()
    await (await mf.sign("stuck")).aio_run_no_wait({})
    await started.wait()
    with pytest.raises(TimeoutError):
        await backend.join(timeout=0.05)
    await mf.aclose()


async def test_shutdown_after_drain_timeout_cancels_running_tasks_and_returns() -> None:
    mf, backend, started, cancelled = app_with_a_stuck_task()
    await (await mf.sign("stuck")).aio_run_no_wait({})
    await started.wait()
    await backend.shutdown(drain_timeout=0.05)
    assert cancelled.is_set()
    await mf.aclose()


async def test_a_retry_waiting_for_its_backoff_does_not_hold_a_slot() -> None:
    """One worker with one slot: while the failed task waits out a long backoff, a task
    published after it runs to the end; shutting down drops the pending retry."""
    backend = LocalBackend(workers=1, concurrency=1)
    mf = Mageflow(backend=backend, redis_url="memory://")
    seen: list[str] = []

    @mf.task("flaky", retries=1, backoff=Backoff.constant(600))
    async def flaky(message: dict[str, Any]) -> str:
        seen.append("flaky")
        raise RuntimeError("fails")

    @mf.task("other")
    async def other(message: dict[str, Any]) -> str:
        seen.append("other")
        return "done"

    await (await mf.sign("flaky")).aio_run_no_wait({})
    assert await (await mf.sign("other")).aio_run({}, timeout=5) == "done"
    assert seen == ["flaky", "other"]
    await backend.shutdown(drain_timeout=0)
    await mf.aclose()


async def test_retry_delay_is_the_backoff_of_tasks_without_one() -> None:
    backend = LocalBackend(retry_delay=0.2)
    mf = Mageflow(backend=backend, redis_url="memory://")
    started: list[float] = []

    @mf.task("flaky", retries=1)
    async def flaky(message: dict[str, Any]) -> str:
        started.append(asyncio.get_running_loop().time())
        if len(started) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    assert await (await mf.sign("flaky")).aio_run({}, timeout=5) == "ok"
    assert started[1] - started[0] >= 0.2
    with pytest.raises(ConfigurationError, match="retry_delay"):
        LocalBackend(retry_delay=-1)
    await mf.aclose()
