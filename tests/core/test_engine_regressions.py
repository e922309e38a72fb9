"""Deterministic reproductions of engine bugs found by tests/core/test_engine_properties.py.

Each test is the smallest sequence found, replayed message by message through
ManualBackend on MemoryStore and on a real Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.engine import split_key
from mageflow.errors import SwarmClosedError
from mageflow.flows import reconcile
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Mageflow:
    """An app whose reconciler runs only when the test sweeps, re-sending at once."""
    ran: list[str] = []

    @manual_app.task("reg.echo")
    async def echo(msg: dict[str, Any]) -> Any:
        ran.append(msg["tag"])
        return msg["tag"]

    manual_app.ran = ran  # type: ignore[attr-defined]
    return manual_app


def manual(mf: Mageflow) -> ManualBackend:
    assert isinstance(mf.backend, ManualBackend)
    return mf.backend


async def test_publish_lost_after_the_root_finished_is_resent(app: Mageflow) -> None:
    """A callback's callback is dispatched after the workflow's root finished. A sweep
    that ran in between (root terminal, nothing dispatched-and-unstarted) dropped the
    workflow from the reconciler's live index, so when that publish is lost nothing
    ever re-sends it: the callback never runs. DESIGN.md §4 "Nothing lost"."""
    cb2 = await app.sign("reg.echo", tag="cb2")
    cb1 = await app.sign("reg.echo", tag="cb1", success_callbacks=[cb2])
    root = await app.sign("reg.echo", tag="root", success_callbacks=[cb1])
    await root.aio_run_no_wait({})
    (m_root,) = manual(app).take()
    await manual(app).deliver(m_root)
    assert await root.get_status() is SignatureStatus.DONE
    (m_cb1,) = manual(app).take()
    # a worker starts cb1; while it runs, a reconciler sweep passes
    assert (await app.engine.start(m_cb1.key, m_cb1.run_id)).action == "run"
    assert await reconcile.sweep(app) == 0
    # the worker finishes cb1 (same run); cb2 is dispatched, and that publish is lost
    await manual(app).deliver(m_cb1)
    (lost,) = manual(app).take()
    assert lost.key == cb2.key
    # the reconciler must re-send cb2: it was dispatched and never started
    assert await reconcile.sweep(app) == 1, "the lost publish of cb2 was never re-sent"
    (resent,) = manual(app).take()
    await manual(app).deliver(resent)
    assert app.ran == ["root", "cb1", "cb2"]  # type: ignore[attr-defined]
    assert await cb2.get_status() is SignatureStatus.DONE


async def test_publish_lost_after_resuming_a_held_callback_is_resent(app: Mageflow) -> None:
    """The same gap, as the property test shrank it: the root's callback is suspended,
    the root finishes (the callback is held, nothing is dispatched), a sweep drops the
    workflow from the live index, resume dispatches the callback and that publish is
    lost: no sweep ever re-sends it."""
    cb = await app.sign("reg.echo", tag="cb")
    root = await app.sign("reg.echo", tag="root", success_callbacks=[cb])
    await cb.suspend()
    await root.aio_run_no_wait({})
    (m_root,) = manual(app).take()
    await manual(app).deliver(m_root)
    assert manual(app).take() == []  # the callback is held
    assert await reconcile.sweep(app) == 0
    await cb.resume()
    (lost,) = manual(app).take()
    assert lost.key == cb.key
    assert await reconcile.sweep(app) == 1, "the lost publish of the callback was never re-sent"
    (resent,) = manual(app).take()
    await manual(app).deliver(resent)
    assert app.ran == ["root", "cb"]  # type: ignore[attr-defined]


async def _keys_of(app: Mageflow, wf: str) -> list[str]:
    store = app.store
    if isinstance(store, RedisStore):
        return sorted([k async for k in store.client.scan_iter(match=f"*{{{wf}}}*")])
    assert isinstance(store, MemoryStore)
    return sorted(k for k in store.keyspace.data if f"{{{wf}}}" in k)


async def test_refused_add_of_a_swarm_item_writes_nothing(app: Mageflow) -> None:
    """Adding a swarm (as an item) to a closed swarm raises SwarmClosedError, but
    SwarmSignature.add_task writes the item's own item list into the target workflow
    before the engine refuses the add: an orphan key that lives for the active TTL."""
    sw = await app.swarm(["reg.echo"], is_swarm_closed=True)  # closed
    wf, _ = split_key(sw.key)
    before = await _keys_of(app, wf)
    inner = await app.swarm(["reg.echo", "reg.echo"], is_swarm_closed=True)
    with pytest.raises(SwarmClosedError):
        await sw.add_task(inner)
    assert await _keys_of(app, wf) == before


async def test_reconcile_ends_even_when_everything_is_always_due(app: Mageflow) -> None:
    """With resend_after=0 every sweep finds the unstarted dispatch due again; one
    reconcile() call still ends, having re-sent it once."""
    sig = await app.sign("reg.echo", tag="x")
    await sig.aio_run_no_wait({})
    manual(app).take()  # the publish is lost
    assert await app.reconcile() == 1
    assert len(manual(app).take()) == 1
