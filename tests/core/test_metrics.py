"""The Prometheus observer in-process: the swarm gauges follow a running swarm (read from
the store when an item finishes) and are dropped once it finishes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mageflow import Mageflow, SwarmConfig
from mageflow.plugins import metrics
from mageflow.plugins.manager import unregister_observer
from tests.core.stores import manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_swarm_gauges_follow_the_swarm(manual_app: Mageflow) -> None:
    @manual_app.task("mt.ok")
    async def ok(msg: dict[str, Any]) -> int:
        return 1

    observer = metrics.install(manual_app.store)
    try:
        items = [await manual_app.sign("mt.ok") for _ in range(5)]
        sw = await manual_app.swarm(
            items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True
        )
        await sw.aio_run_no_wait({})
        first, second = manual(manual_app).take()
        await manual(manual_app).deliver(first)
        await asyncio.gather(*list(observer._refreshing.values()))

        def value(name: str) -> float | None:
            return observer.registry.get_sample_value(name, {"swarm": sw.key})

        assert value("mageflow_swarm_running") == 2  # the second, and the one it started
        assert value("mageflow_swarm_queued") == 2
        assert (
            observer.registry.get_sample_value("mageflow_task_started_total", {"task": "mt.ok"})
            == 1
        )
        await manual(manual_app).deliver(second)
        while (await sw.get_state()).status.value != "done":
            for m in manual(manual_app).take():
                await manual(manual_app).deliver(m)
        await asyncio.gather(*list(observer._refreshing.values()))
        assert value("mageflow_swarm_running") is None
        assert (
            observer.registry.get_sample_value("mageflow_task_succeeded_total", {"task": "mt.ok"})
            == 5
        )
    finally:
        unregister_observer(observer)
