"""The pytest plugin runs a user's own app for real on the embedded default."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from mageflow import Mageflow, ReturnValue, SwarmConfig
from mageflow.errors import TaskFailedError
from mageflow.store import RedisStore
from mageflow.testing.pytest_plugin import WorkflowTestRun

# a user's app as they would write it: configured for Redis + a real backend elsewhere
app = Mageflow(backend="local", redis_url="redis://127.0.0.1:1/0")


class Total(BaseModel):
    values: ReturnValue[list[int]]


@app.task("square")
async def square(msg: dict[str, Any]) -> int:
    return int(msg["n"]) ** 2


@app.task("total", input_validator=Total)
async def total(msg: Total) -> int:
    return sum(msg.values)


@app.task("explode")
async def explode(msg: dict[str, Any]) -> None:
    raise RuntimeError("kaboom")


@app.task("report")
async def report(msg: dict[str, Any]) -> str:
    return "reported"


@pytest.fixture
def mageflow_app() -> Mageflow:
    return app


async def test_workflow_runs_in_process_and_is_recorded(mageflow_run: WorkflowTestRun) -> None:
    assert not isinstance(app.store, RedisStore), "the test must not touch the configured Redis"
    squares = await app.swarm(
        [await app.sign("square", n=i) for i in range(4)],
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
    )
    wf = await app.chain([squares, "total"], success="report")
    assert await wf.aio_run({}, timeout=5) == 14
    await mageflow_run.settle()
    assert mageflow_run.ran.count("square") == 4
    assert mageflow_run.ran.count("report") == 1
    assert mageflow_run.ran.names()[-2:] == ["total", "report"]


async def test_failures_are_visible(mageflow_run: WorkflowTestRun) -> None:
    sig = await app.sign("explode", error_callbacks=["report"])
    with pytest.raises(TaskFailedError, match="kaboom"):
        await mageflow_run.wait(await _run(sig))
    await mageflow_run.settle()
    assert mageflow_run.ran.failures("explode") == [{"type": "RuntimeError", "message": "kaboom"}]
    assert mageflow_run.ran.count("report") == 1


async def _run(sig: Any) -> Any:
    await sig.aio_run_no_wait({})
    return sig


def test_app_is_restored_after_the_test() -> None:
    assert isinstance(app.store, RedisStore)
