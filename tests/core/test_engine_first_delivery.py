"""The finish transition of a first delivery that ran before its start was recorded
(``Engine.finish(first_run=...)``): it takes the start and settles in one call, on both
hosts of the script. A delivery the start would have refused changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.engine import fields as F
from mageflow.models.status import SignatureStatus
from tests.core.stores import manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    @manual_app.task("first.step")
    async def step(msg: dict[str, Any]) -> Any:
        return msg.get("mageflow_results", msg.get("x", 0)) + 1

    return manual_app


async def _chain(app: Mageflow) -> tuple[Any, str]:
    """A two-step chain run; the key of its dispatched first step."""
    wf = await app.chain(["first.step", "first.step"])
    await wf.aio_run_no_wait({"x": 1})
    (sent,) = manual(app).take()
    return wf, sent.key


async def test_takes_the_start_and_settles_in_one_call(app: Mageflow) -> None:
    _wf, key = await _chain(app)
    transition = await app.engine.finish(key, True, "2", first_run="run-a")
    assert not transition.duplicate
    assert [p.task_name for p in transition.publishes] == ["first.step"]  # step 2
    wf_id, sid = key.split(".", 1)
    attempts, run_id, started = await F.read_node(
        app.store, wf_id, sid, [F.ATTEMPTS, F.RUN_ID, F.STARTED]
    )
    assert (attempts, run_id) == ("1", "run-a") and started is not None
    assert (await (await app.load(key)).get_state()).status is SignatureStatus.DONE


async def test_a_repeated_call_changes_nothing(app: Mageflow) -> None:
    _wf, key = await _chain(app)
    first = await app.engine.finish(key, True, "2", first_run="run-a")
    again = await app.engine.finish(key, True, "2", first_run="run-a")
    assert again.duplicate
    # what the first call dispatched and nothing started yet is re-issued, not re-created
    assert [p.key for p in again.publishes] == [p.key for p in first.publishes]
    other = await app.engine.finish(key, True, "7", first_run="run-b")
    assert other.duplicate and other.publishes == []


async def test_a_canceled_workflow_records_nothing(app: Mageflow) -> None:
    wf, key = await _chain(app)
    await wf.cancel()
    transition = await app.engine.finish(key, True, "2", first_run="run-a")
    assert transition.duplicate and transition.publishes == []
    assert (await wf.get_state()).status is SignatureStatus.CANCELED
    assert (await (await app.load(key)).get_state()).status is SignatureStatus.PENDING


async def test_a_copy_that_started_first_keeps_the_task(app: Mageflow) -> None:
    _wf, key = await _chain(app)
    started = await app.engine.start(key, "run-b", "first.step")
    assert started.action == "run"
    late = await app.engine.finish(key, True, "99", first_run="run-a")
    assert late.duplicate and late.publishes == []
    mine = await app.engine.finish(key, True, "2")
    assert [p.task_name for p in mine.publishes] == ["first.step"]


async def test_under_a_suspend_the_outcome_waits_for_resume(app: Mageflow) -> None:
    wf, key = await _chain(app)
    await wf.suspend()
    held = await app.engine.finish(key, True, "2", first_run="run-a")
    assert not held.duplicate and held.publishes == []  # step 2 waits
    await wf.resume()
    (step2,) = manual(app).take()
    assert step2.key != key  # step 2, and step 1 is not dispatched again
    await manual(app).deliver(step2)
    assert await wf.wait(timeout=5) == 3


async def test_a_start_taken_while_it_runs_is_kept(app: Mageflow) -> None:
    _wf, key = await _chain(app)
    late_start = await app.engine.start(key, "run-a", "first.step", lease=5.0)
    assert late_start.action == "run"
    transition = await app.engine.finish(key, True, "2", first_run="run-a")
    assert not transition.duplicate
    assert [p.task_name for p in transition.publishes] == ["first.step"]
