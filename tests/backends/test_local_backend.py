"""The ``local`` backend's own behaviour beyond the contract suite: draining and stopping."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mageflow import Mageflow
from mageflow.backend.local import LocalBackend


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
