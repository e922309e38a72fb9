"""``retry``: a failed workflow re-runs from its failure points, message by message
through ManualBackend, on MemoryStore and on a real Redis (the one engine script)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import split_key
from mageflow.errors import (
    NonRetryableError,
    SignatureInUseError,
    WorkflowBusyError,
    WorkflowNotFailedError,
)
from mageflow.flows import reconcile
from mageflow.models.status import SignatureStatus
from tests.core.stores import drain, manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Tasks:
    """What the test tasks did; ``failing`` tags raise."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.failing: set[str] = set()


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    tasks = Tasks()

    @manual_app.task("rr.step")
    async def step(msg: dict[str, Any]) -> Any:
        tasks.ran.append(msg["tag"])
        if msg["tag"] in tasks.failing:
            raise NonRetryableError(f"{msg['tag']} failed")
        return msg["tag"]

    manual_app.t = tasks  # type: ignore[attr-defined]
    return manual_app


def t(mf: Mageflow) -> Tasks:
    return mf.t  # type: ignore[attr-defined,no-any-return]


async def sign(mf: Mageflow, tag: str, **kw: Any) -> Any:
    return await mf.sign("rr.step", tag=tag, **kw)


async def test_chain_resumes_at_its_failed_step(app: Mageflow) -> None:
    ok = await sign(app, "ok")
    err = await sign(app, "err")
    wf = await app.chain(
        [await sign(app, "a"), await sign(app, "b"), await sign(app, "c")], success=ok, error=err
    )
    t(app).failing.add("b")
    await wf.aio_run_no_wait({})
    await drain(app)
    assert await wf.get_status() is SignatureStatus.FAILED
    assert t(app).ran == ["a", "b", "err"]
    t(app).failing.clear()
    await wf.retry()
    assert await wf.get_status() is SignatureStatus.ACTIVE
    await drain(app)
    assert t(app).ran == ["a", "b", "err", "b", "c", "ok"]
    assert await wf.wait(timeout=5) == "c"
    state = await wf.get_state()
    assert state.error is None


async def test_retry_is_refused_unless_failed_and_idle(app: Mageflow) -> None:
    err = await sign(app, "err")
    wf = await app.chain([await sign(app, "a")], error=err)
    with pytest.raises(WorkflowNotFailedError, match="pending"):
        await wf.retry()
    t(app).failing.add("a")
    await wf.aio_run_no_wait({})
    (m_a,) = manual(app).take()
    with pytest.raises(WorkflowNotFailedError, match="active"):
        await wf.retry()
    with pytest.raises(NonRetryableError):
        await manual(app).deliver(m_a)
    # the error callback is dispatched and has not run: re-arming it now would lose it
    with pytest.raises(WorkflowBusyError, match="error callbacks"):
        await wf.retry()
    with pytest.raises(SignatureInUseError, match="root"):
        await (await app.load(f"{split_key(wf.key)[0]}.r.0")).retry()
    await drain(app)
    await wf.retry()
    # a second, concurrent retry finds the workflow running again
    with pytest.raises(WorkflowNotFailedError, match="active"):
        await wf.retry()
    t(app).failing.clear()
    await drain(app)
    assert await wf.get_status() is SignatureStatus.DONE
    with pytest.raises(WorkflowNotFailedError, match="done"):
        await wf.retry()


async def test_error_callbacks_fire_again_on_a_second_failure(app: Mageflow) -> None:
    # a composite error callback, with a callback of its own, re-armed as a whole
    inner_ok = await sign(app, "inner-ok")
    on_err = await app.chain([await sign(app, "e1"), await sign(app, "e2")], success=inner_ok)
    sig = await sign(app, "x", error_callbacks=[on_err])
    t(app).failing.add("x")
    await sig.aio_run_no_wait({})
    await drain(app)
    await sig.retry()
    await drain(app)
    assert t(app).ran == ["x", "e1", "e2", "inner-ok"] * 2
    t(app).failing.clear()
    await sig.retry()
    await drain(app)
    assert t(app).ran[-1] == "x"
    assert await sig.wait(timeout=5) == "x"


async def test_swarm_reruns_failed_and_stopped_items_only(app: Mageflow) -> None:
    ok = await sign(app, "ok")
    err = await sign(app, "err")
    items = [await sign(app, f"i{i}") for i in range(5)]
    sw = await app.swarm(
        items,
        success_callbacks=[ok],
        error_callbacks=[err],
        config=SwarmConfig(max_concurrency=1, stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    t(app).failing.add("i1")
    await sw.aio_run_no_wait({})
    await drain(app)
    assert t(app).ran == ["i0", "i1", "err"]
    assert (await sw.get_state()).counts["failed"] == 1
    t(app).failing.clear()
    await sw.retry()
    await drain(app)
    assert t(app).ran == ["i0", "i1", "err", "i1", "i2", "i3", "i4", "ok"]
    assert await sw.wait(timeout=5) == ["i0", "i1", "i2", "i3", "i4"]
    state = await sw.get_state()
    assert state.counts["done"] == 5 and state.counts.get("failed", 0) == 0


async def test_a_failed_composite_item_resumes_from_its_own_failure(app: Mageflow) -> None:
    ok = await sign(app, "ok")
    inner = await app.chain([await sign(app, "c1"), await sign(app, "c2")])
    sw = await app.swarm(
        [inner, await sign(app, "i1")],
        success_callbacks=[ok],
        config=SwarmConfig(max_concurrency=1, stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    wf = await app.chain([await sign(app, "first"), sw, await sign(app, "last")])
    t(app).failing.add("c2")
    await wf.aio_run_no_wait({})
    await drain(app)
    assert t(app).ran == ["first", "c1", "c2"]
    assert await wf.get_status() is SignatureStatus.FAILED
    t(app).failing.clear()
    await wf.retry()
    await drain(app)
    assert t(app).ran == ["first", "c1", "c2", "c2", "i1", "ok", "last"]
    assert await wf.wait(timeout=5) == "last"


async def test_a_stale_redelivery_of_the_failed_run_runs_nothing_twice(app: Mageflow) -> None:
    wf = await app.chain([await sign(app, "a"), await sign(app, "b")])
    t(app).failing.add("a")
    await wf.aio_run_no_wait({})
    (old,) = manual(app).take()
    with pytest.raises(NonRetryableError):
        await manual(app).deliver(old)
    t(app).failing.clear()
    await wf.retry()
    (new,) = manual(app).take()
    await manual(app).deliver(old)  # the broker redelivers the failed run: it is the re-run
    await manual(app).deliver(new)  # ... so the re-dispatch is a duplicate
    await manual(app).deliver(old)
    await drain(app)
    assert t(app).ran == ["a", "a", "b"]
    assert await wf.wait(timeout=5) == "b"


async def test_a_stale_copy_of_a_queued_item_is_dropped(app: Mageflow) -> None:
    items = [await sign(app, "i0"), await sign(app, "i1")]
    sw = await app.swarm(
        items,
        config=SwarmConfig(max_concurrency=1, stop_after_n_failures=2),
        is_swarm_closed=True,
    )
    t(app).failing.update({"i0", "i1"})
    await sw.aio_run_no_wait({})
    delivered = await drain(app)
    stale_i1 = delivered[1]
    t(app).failing.clear()
    await sw.retry()
    (first,) = manual(app).take()
    # i1 is queued behind i0 (one slot): a stale copy of its failed run must not start it
    await manual(app).deliver(stale_i1)
    assert t(app).ran == ["i0", "i1"]
    await manual(app).deliver(first)
    await drain(app)
    assert t(app).ran == ["i0", "i1", "i0", "i1"]
    assert await sw.wait(timeout=5) == ["i0", "i1"]


async def test_a_lost_re_dispatch_is_resent_by_the_reconciler(app: Mageflow) -> None:
    sig = await sign(app, "a")
    t(app).failing.add("a")
    await sig.aio_run_no_wait({})
    await drain(app)
    t(app).failing.clear()
    await sig.retry()
    assert len(manual(app).take()) == 1  # that publish is lost
    assert await reconcile.sweep(app) == 1
    await drain(app)
    assert await sig.wait(timeout=5) == "a"
    assert t(app).ran == ["a", "a"]


async def test_an_open_swarm_retried_completes_once_closed(app: Mageflow) -> None:
    sw = await app.swarm([await sign(app, "i0")], config=SwarmConfig(stop_after_n_failures=1))
    await sw.aio_run_no_wait({})
    late = await sw.add_task("rr.step", tag="late")
    t(app).failing.add("i0")
    await drain(app)
    assert await sw.get_status() is SignatureStatus.FAILED
    t(app).failing.clear()
    await sw.retry()
    await drain(app)
    assert await sw.get_status() is SignatureStatus.ACTIVE
    await sw.close_swarm()
    await drain(app)
    assert await sw.wait(timeout=5) == ["i0", "late"]
    assert await late.get_status() is SignatureStatus.DONE


async def test_items_a_stopped_swarm_let_run_keep_their_slot_and_count_once(
    app: Mageflow,
) -> None:
    ok = await sign(app, "ok")
    items = [await sign(app, f"i{i}") for i in range(4)]
    sw = await app.swarm(
        items,
        success_callbacks=[ok],
        config=SwarmConfig(max_concurrency=2, stop_after_n_failures=1),
        is_swarm_closed=True,
    )
    t(app).failing.add("i0")
    await sw.aio_run_no_wait({})
    m0, m1 = manual(app).take()
    with pytest.raises(NonRetryableError):
        await manual(app).deliver(m0)
    assert await sw.get_status() is SignatureStatus.FAILED
    t(app).failing.clear()
    await sw.retry()  # i1 is still dispatched: it keeps its slot, so only i0 starts again
    (again,) = manual(app).take()
    assert again.key == m0.key
    await manual(app).deliver(m1)
    await drain(app)
    await manual(app).deliver(again)
    await drain(app)
    assert sorted(t(app).ran) == ["i0", "i0", "i1", "i2", "i3", "ok"]
    assert await sw.wait(timeout=5) == ["i0", "i1", "i2", "i3"]
    assert (await sw.get_state()).counts["done"] == 4
