"""Observer hooks fire once per workflow event, with workflow attributes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.errors import TaskFailedError
from mageflow.models.events import WorkflowEvent
from mageflow.plugins import hookimpl
from mageflow.plugins.manager import register_observer, unregister_observer


class Recorder:
    def __init__(self) -> None:
        self.events: list[WorkflowEvent] = []

    def _add(self, event: WorkflowEvent) -> None:
        self.events.append(event)

    mageflow_task_started = hookimpl(lambda self, event: self._add(event))
    mageflow_task_succeeded = hookimpl(lambda self, event: self._add(event))
    mageflow_task_failed = hookimpl(lambda self, event: self._add(event))
    mageflow_task_retried = hookimpl(lambda self, event: self._add(event))
    mageflow_chain_advanced = hookimpl(lambda self, event: self._add(event))
    mageflow_swarm_item_done = hookimpl(lambda self, event: self._add(event))
    mageflow_workflow_finished = hookimpl(lambda self, event: self._add(event))
    mageflow_workflow_suspended = hookimpl(lambda self, event: self._add(event))
    mageflow_workflow_resumed = hookimpl(lambda self, event: self._add(event))

    def names(self, name: str) -> list[WorkflowEvent]:
        return [e for e in self.events if e.name == name]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    register_observer(rec)
    yield rec
    unregister_observer(rec)


def app() -> Mageflow:
    mf = Mageflow(backend=LocalBackend(workers=2, concurrency=2), redis_url="memory://")

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        return int(msg.get("mageflow_results", 0)) + 1

    @mf.task("flaky", retries=1)
    async def flaky(msg: dict[str, Any]) -> None:
        raise ValueError("nope")

    return mf


async def test_chain_with_nested_swarm_reports_each_event_once(recorder: Recorder) -> None:
    mf = app()
    inner = await mf.swarm(
        ["inc", "inc", "inc"], config=SwarmConfig(max_concurrency=2), is_swarm_closed=True
    )
    wf = await mf.chain(["inc", inner], name="outer")
    await wf.aio_run({}, timeout=5)
    started = recorder.names("task_started")
    assert len(started) == 4
    assert all(e.workflow == wf.key for e in started)
    assert len(recorder.names("task_succeeded")) == 4
    (advanced,) = recorder.names("chain_advanced")
    assert advanced.key == wf.key
    assert advanced.related == inner.key
    items = recorder.names("swarm_item_done")
    assert [e.key for e in items] == [inner.key] * 3
    assert {e.status for e in items} == {"done"}
    finished = {e.key: e for e in recorder.names("workflow_finished")}
    assert set(finished) == {wf.key, inner.key}
    assert finished[inner.key].parent == wf.key
    assert finished[wf.key].status == "done"
    await mf.aclose()


async def test_retry_failure_and_lifecycle_events(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    mf = app()
    caplog.set_level(logging.DEBUG, logger="mageflow.events")
    sig = await mf.sign("flaky")
    with pytest.raises(TaskFailedError):
        await sig.aio_run({}, timeout=5)
    for _ in range(100):  # the hook runs just after the transition the waiter sees
        if recorder.names("task_failed"):
            break
        await asyncio.sleep(0.01)
    (retried,) = recorder.names("task_retried")
    assert retried.attempt == 1
    assert retried.error == {"type": "ValueError", "message": "nope"}
    (failed,) = recorder.names("task_failed")
    assert failed.attempt == 2
    (done,) = recorder.names("workflow_finished")
    assert done.status == "failed"
    assert any(getattr(r, "mageflow", {}).get("name") == "task_failed" for r in caplog.records)

    wf = await mf.chain(["inc", "inc"])
    await wf.suspend()
    await wf.resume()
    assert [e.name for e in recorder.events[-2:]] == ["workflow_suspended", "workflow_resumed"]
    await mf.aclose()
