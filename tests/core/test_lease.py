"""A running attempt's lease (issue 13 item 6): a copy of the same run does not run the
user code while the attempt holds the task, and takes over once the lease lapsed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.models.retry import Backoff
from mageflow.models.status import SignatureStatus
from tests.core.stores import manual

pytestmark = pytest.mark.asyncio(loop_scope="session")

BACKOFF = 1.0


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    manual_app.lease = 0.6
    manual_app.release = asyncio.Event()  # type: ignore[attr-defined]
    manual_app.began = asyncio.Event()  # type: ignore[attr-defined]
    ran: list[str] = []
    manual_app.ran = ran  # type: ignore[attr-defined]

    @manual_app.task("lease.slow", retries=1)
    async def slow(msg: dict[str, Any]) -> Any:
        ran.append(msg["tag"])
        manual_app.began.set()  # type: ignore[attr-defined]
        await manual_app.release.wait()  # type: ignore[attr-defined]
        if msg.get("fail_first") and len(ran) == 1:
            raise RuntimeError("first attempt fails")
        return msg["tag"]

    @manual_app.task("lease.backoff", retries=1, backoff=Backoff.constant(BACKOFF))
    async def backoff(msg: dict[str, Any]) -> Any:
        ran.append(msg["tag"])
        if len(ran) == 1:
            raise RuntimeError("first attempt fails")
        return msg["tag"]

    return manual_app


async def test_copy_waits_while_the_attempt_runs_then_is_a_duplicate(app: Mageflow) -> None:
    sig = await app.sign("lease.slow", tag="a")
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    original = asyncio.create_task(manual(app).deliver(sent))
    await app.began.wait()  # type: ignore[attr-defined]
    # the same run delivered again while it runs: it must wait, not run the user code,
    # across several renewals of the lease (0.6 s, renewed every 0.2 s)
    copy = asyncio.create_task(manual(app).deliver(sent))
    await asyncio.sleep(1.5)
    assert app.ran == ["a"]  # type: ignore[attr-defined]
    assert not copy.done()
    app.release.set()  # type: ignore[attr-defined]
    assert await original == "a"
    assert await copy is None  # the copy saw the finished run and ran nothing
    assert app.ran == ["a"]  # type: ignore[attr-defined]
    assert await sig.get_status() is SignatureStatus.DONE


async def test_copy_takes_over_when_the_lease_lapsed(app: Mageflow) -> None:
    sig = await app.sign("lease.slow", tag="b")
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    # the original worker starts the task and dies: nobody renews its lease
    assert (await app.engine.start(sent.key, sent.run_id, "lease.slow", 0.3)).action == "run"
    app.release.set()  # type: ignore[attr-defined]
    assert await manual(app).deliver(sent) == "b"  # waited for the lapse, then ran
    assert app.ran == ["b"]  # type: ignore[attr-defined]
    assert await sig.get_status() is SignatureStatus.DONE


async def test_retry_of_the_same_run_starts_at_once(app: Mageflow) -> None:
    """A failed attempt that will be retried releases its lease: the retry (same run id)
    runs without waiting for it to lapse."""
    app.lease = 30.0
    app.release.set()  # type: ignore[attr-defined]
    sig = await app.sign("lease.slow", tag="c", fail_first=True)
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    with pytest.raises(RuntimeError):
        await manual(app).deliver(sent, final=False)
    assert await asyncio.wait_for(manual(app).deliver(sent, attempt=2), 5) == "c"
    assert app.ran == ["c", "c"]  # type: ignore[attr-defined]


async def test_a_failed_delivery_redelivered_waits_for_the_backoff(app: Mageflow) -> None:
    """A failed attempt keeps its lease for the shortest backoff: the failed delivery
    itself, redelivered because its worker died before acknowledging it (the retry was
    published, or not), does not run the retry's user code before the backoff is due."""
    app.lease = 30.0
    sig = await app.sign("lease.backoff", tag="d")
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    with pytest.raises(RuntimeError):
        await manual(app).deliver(sent, final=False)
    copy = asyncio.create_task(manual(app).deliver(sent, final=False))
    await asyncio.sleep(BACKOFF / 2)
    assert app.ran == ["d"]  # type: ignore[attr-defined]
    assert not copy.done()
    assert await asyncio.wait_for(copy, 5 * BACKOFF) == "d"  # ran once the backoff was due
    assert app.ran == ["d", "d"]  # type: ignore[attr-defined]
    assert await sig.get_status() is SignatureStatus.DONE
