"""A task returning a workflow to run in its place, and cancel of any node, message by
message through ManualBackend on MemoryStore and a real Redis (the one engine script)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.errors import NonRetryableError, TaskFailedError, WorkflowFinishedError
from mageflow.models.status import SignatureStatus
from tests.core.stores import deliver_all, drain, manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Ran:
    def __init__(self) -> None:
        self.tags: list[str] = []
        self.failing: set[str] = set()
        self.fanout = 0  # how often the fan-out task's own code ran


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    ran = Ran()
    mf = manual_app

    @mf.task("cc.step")
    async def step(msg: dict[str, Any]) -> Any:
        ran.tags.append(msg["tag"])
        if msg["tag"] in ran.failing:
            raise NonRetryableError(f"{msg['tag']} failed")
        return msg["tag"]

    @mf.task("cc.fanout")
    async def fanout(msg: dict[str, Any]) -> Any:
        ran.fanout += 1
        items = [{"tag": f"{msg['tag']}-{i}"} for i in range(msg["n"])]
        config = SwarmConfig(max_concurrency=2, stop_after_n_failures=msg.get("budget"))
        return await mf.swarm_of("cc.step", items, is_swarm_closed=True, config=config)

    mf.ran = ran  # type: ignore[attr-defined]
    return mf


def ran(mf: Mageflow) -> Ran:
    return mf.ran  # type: ignore[attr-defined,no-any-return]


async def test_returned_swarm_runs_in_the_tasks_place(app: Mageflow) -> None:
    done = await app.sign("cc.step", tag="cb")
    fan = await app.sign("cc.fanout", tag="f", n=5, success_callbacks=[done])
    wf = await app.chain([fan, await app.sign("cc.step", tag="after")])
    await wf.aio_run_no_wait({})
    (first,) = manual(app).take()
    await manual(app).deliver(first)
    # the task's own code ran once; its node now waits for the swarm it returned
    assert ran(app).fanout == 1
    assert (await fan.get_state()).status is SignatureStatus.ACTIVE
    # a redelivery of the same run does not run the task's code again
    await manual(app).deliver(first)
    assert ran(app).fanout == 1
    await drain(app)
    assert sorted(ran(app).tags[:5]) == [f"f-{i}" for i in range(5)]
    assert ran(app).tags[5:] == ["cb", "after"]
    assert await fan.wait(timeout=5) == [f"f-{i}" for i in range(5)]
    assert await wf.wait(timeout=5) == "after"


async def test_failed_continuation_fails_the_task_and_retry_resumes_it(app: Mageflow) -> None:
    err = await app.sign("cc.step", tag="err")
    fan = await app.sign("cc.fanout", tag="g", n=3, budget=1, error_callbacks=[err])
    wf = await app.chain([fan, await app.sign("cc.step", tag="next")])
    ran(app).failing.add("g-1")
    await wf.aio_run_no_wait({})
    await drain(app)
    assert await wf.get_status() is SignatureStatus.FAILED
    assert ran(app).tags.count("err") == 1 and "next" not in ran(app).tags
    ran(app).failing.clear()
    ran(app).tags.clear()
    await wf.retry()
    await drain(app)
    # only the failed item runs again; the task that computed the swarm does not
    assert ran(app).tags == ["g-1", "next"]
    assert ran(app).fanout == 1
    assert await wf.wait(timeout=5) == "next"


async def test_returning_a_signature_that_already_ran_fails_the_task(app: Mageflow) -> None:
    used = await app.sign("cc.step", tag="used")
    await used.aio_run_no_wait({})

    @app.task("cc.bad_return")
    async def bad_return(msg: dict[str, Any]) -> Any:
        return used

    wf = await app.sign("cc.bad_return")
    await wf.aio_run_no_wait({})
    await drain(app)
    with pytest.raises(TaskFailedError, match="already run"):
        await wf.wait(timeout=5)


async def test_cancel_a_queued_swarm_item_counts_as_a_failure(app: Mageflow) -> None:
    items = [await app.sign("cc.step", tag=f"q{i}") for i in range(3)]
    sw = await app.swarm(items, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    (running,) = manual(app).take()
    await items[2].cancel()
    assert await items[2].get_status() is SignatureStatus.CANCELED
    await deliver_all(app, [running])
    await drain(app)
    assert ran(app).tags == ["q0", "q1"]
    result = await sw.wait(timeout=5)
    assert result[:2] == ["q0", "q1"]
    assert result[2]["mageflow_error"]["type"] == "Canceled"
    with pytest.raises(WorkflowFinishedError):
        await items[2].cancel()


async def test_cancel_of_an_item_spends_the_failure_budget(app: Mageflow) -> None:
    err = await app.sign("cc.step", tag="sw-err")
    items = [await app.sign("cc.step", tag=f"b{i}") for i in range(3)]
    sw = await app.swarm(
        items,
        config=SwarmConfig(max_concurrency=3, stop_after_n_failures=1),
        is_swarm_closed=True,
        error_callbacks=[err],
    )
    await sw.aio_run_no_wait({})
    sent = manual(app).take()
    assert len(sent) == 3
    await items[1].cancel()  # running: the engine gives back its run id
    assert await sw.get_status() is SignatureStatus.FAILED
    await deliver_all(app, sent)  # the canceled item's delivery is dropped
    await drain(app)
    assert sorted(ran(app).tags) == ["b0", "b2", "sw-err"]
    with pytest.raises(TaskFailedError, match="stop_after_n_failures"):
        await sw.wait(timeout=5)


async def test_cancel_a_running_chain_step_fails_the_chain_once(app: Mageflow) -> None:
    own_err = await app.sign("cc.step", tag="own-err")
    step = await app.sign("cc.step", tag="s1", error_callbacks=[own_err])
    chain_err = await app.sign("cc.step", tag="chain-err")
    wf = await app.chain(
        [await app.sign("cc.step", tag="s0"), step, await app.sign("cc.step", tag="s2")],
        error=chain_err,
    )
    await wf.aio_run_no_wait({})
    await drain_one(app)  # s0
    (s1,) = manual(app).take()
    await step.cancel()
    await deliver_all(app, [s1])  # dropped: its node was canceled
    await drain(app)
    assert ran(app).tags == ["s0", "chain-err"]  # the step's own error callback never fires
    with pytest.raises(TaskFailedError) as failed:
        await wf.wait(timeout=5)
    assert failed.value.error_type == "Canceled"
    # retry runs the canceled step again, then the rest
    ran(app).tags.clear()
    await wf.retry()
    await drain(app)
    assert ran(app).tags == ["s1", "s2"]
    assert await wf.wait(timeout=5) == "s2"


async def test_cancel_a_step_before_it_starts(app: Mageflow) -> None:
    later = await app.sign("cc.step", tag="l1")
    wf = await app.chain([await app.sign("cc.step", tag="l0"), later])
    await later.cancel()
    await wf.aio_run_no_wait({})
    await drain(app)
    assert ran(app).tags == ["l0"]
    assert await wf.get_status() is SignatureStatus.FAILED


async def drain_one(mf: Mageflow) -> None:
    (m,) = manual(mf).take()
    await deliver_all(mf, [m])


async def test_cancel_a_graph_node_skips_what_requires_it(app: Mageflow) -> None:
    b = await app.sign("cc.step", tag="gb")
    c = await app.sign("cc.step", tag="gc")
    g = await app.graph(
        {"a": await app.sign("cc.step", tag="ga"), "b": (b, ["a"]), "c": (c, ["b"])}
    )
    await b.cancel()
    await g.aio_run_no_wait({})
    await drain(app)
    assert ran(app).tags == ["ga"]
    assert await c.get_status() is SignatureStatus.SKIPPED
    assert await g.get_status() is SignatureStatus.FAILED
    ran(app).tags.clear()
    await g.retry()
    await drain(app)
    assert ran(app).tags == ["gb", "gc"]
    assert await g.get_status() is SignatureStatus.DONE
