"""Untrusted keys, messages, settings and URLs (issue 13, items 8 and 10-13), on both
hosts of the engine script: real Redis and the in-process store. Deliveries are forged
through ManualBackend, which runs the real worker wrapper."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.base import HEADER_KEY, RunContext
from mageflow.engine import split_key
from mageflow.errors import (
    InvalidKeyError,
    InvalidNameError,
    InvalidTaskError,
    SignatureNotFoundError,
)
from mageflow.flows.tasks import fail_unregistered
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend, Sent
from tests.core.stores import manual, store_for
from tests.core.ttl import ttl_of

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    store = store_for(request, "ut", active_ttl=500, finished_ttl=50)
    mf = Mageflow(backend=ManualBackend(), store=store)
    ran: list[tuple[str, Any]] = []

    @mf.task("inc")
    async def inc(msg: dict[str, Any]) -> int:
        ran.append(("inc", msg.get("n")))
        return int(msg.get("n") or 0) + 1

    @mf.task("other")
    async def other(msg: dict[str, Any]) -> str:
        ran.append(("other", msg.get("n")))
        return "other ran"

    mf.ran = ran  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


def forged(sent: Sent, *, task_name: str | None = None, key: str | None = None) -> Sent:
    """``sent`` as somebody else could publish it: another task name or key header."""
    headers = dict(sent.task.headers)
    if key is not None:
        headers[HEADER_KEY] = key
    task = dataclasses.replace(
        sent.task, task_name=task_name or sent.task.task_name, headers=headers
    )
    return Sent(uuid.uuid4().hex, task)


# -- item 10: keys are validated ---------------------------------------------------------
@pytest.mark.parametrize("field", ["status", "s", "kwargs", "created"])
async def test_load_of_a_state_field_key_is_an_invalid_key(app: Mageflow, field: str) -> None:
    sig = await app.sign("inc", n=1)
    with pytest.raises(InvalidKeyError, match="not a MageFlow signature key"):
        await app.load(f"{sig.key}:{field}")


@pytest.mark.parametrize(
    "key", ["", "x", ".r", "abc.", "abc.q", "a{b}.r", "abc.r.", "abc.r..0", "a\ud800.r", 5, None]
)
async def test_malformed_keys_raise_invalid_key_error(app: Mageflow, key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        await app.load(key)
    assert issubclass(InvalidKeyError, SignatureNotFoundError)  # caught as "not found" too


async def test_kwargs_shaped_like_a_definition_never_become_a_node(app: Mageflow) -> None:
    """A swarm item's kwargs that look like a task definition whose parent is the swarm:
    loading or delivering the kwargs field's key must not create a phantom item that
    completes the swarm early."""
    item = await app.sign("inc", k="task", t="inc", p="r", n=1)
    sw = await app.swarm([item], is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    (real,) = manual(app).take()
    phantom = f"{real.key}:kwargs"
    with pytest.raises(InvalidKeyError):
        await app.load(phantom)
    assert await manual(app).deliver(forged(real, key=phantom)) is None
    assert await sw.get_status() is SignatureStatus.ACTIVE
    assert app.ran == []  # type: ignore[attr-defined]
    await manual(app).deliver(real)
    assert await sw.get_status() is SignatureStatus.DONE
    assert app.ran == [("inc", 1)]  # type: ignore[attr-defined]


# -- item 10: a delivery must match the node it names ------------------------------------
async def test_delivery_under_another_task_name_is_dropped(app: Mageflow) -> None:
    sw = await app.swarm(["inc", "inc"], config=SwarmConfig(max_concurrency=1))
    await sw.close_swarm()
    await sw.aio_run_no_wait({"n": 7})
    (first,) = manual(app).take()  # the second item is queued behind the cap
    queued = await sw.get_state()
    second_key = next(k for k in queued.children if k != first.key)
    # the queued item's key under another task: not run, not completed, cap kept
    assert await manual(app).deliver(forged(first, task_name="other", key=second_key)) is None
    # the dispatched item's key under another task: the same
    assert await manual(app).deliver(forged(first, task_name="other")) is None
    assert app.ran == []  # type: ignore[attr-defined]
    assert (await app.load(second_key)).key == second_key
    assert await (await app.load(second_key)).get_status() is SignatureStatus.PENDING
    # the real deliveries still run, in order, and complete the swarm
    assert await manual(app).deliver(first) == 8
    (second,) = manual(app).take()
    assert second.key == second_key
    assert await manual(app).deliver(second) == 8
    assert await sw.wait(timeout=5) == [8, 8]
    assert app.ran == [("inc", 7), ("inc", 7)]  # type: ignore[attr-defined]


async def test_engine_start_replies_mismatch_with_the_nodes_task(app: Mageflow) -> None:
    sig = await app.sign("inc")
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    outcome = await app.engine.start(sent.key, sent.run_id, "other")
    assert (outcome.action, outcome.node_task) == ("mismatch", "inc")
    assert await sig.get_status() is SignatureStatus.PENDING  # nothing changed


async def test_delivery_under_a_task_name_that_is_not_text_is_dropped(app: Mageflow) -> None:
    sig = await app.sign("inc", n=1)
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    # what a worker does with a name it does not serve: the unregistered-task path
    ctx = RunContext("in\ud800c", sent.run_id, 1, True, dict(sent.task.headers))
    assert await fail_unregistered(app, sent.task.payload, ctx) is None
    assert await sig.get_status() is SignatureStatus.PENDING
    assert await manual(app).deliver(sent) == 2


@pytest.mark.parametrize(
    "payload", [None, 5, "text", [1, 2], {"in": 5}, {"in": "x", "own": 3, "ret": [1]}]
)
async def test_malformed_payloads_do_not_corrupt_the_workflow(app: Mageflow, payload: Any) -> None:
    sig = await app.sign("inc", n=1)
    await sig.aio_run_no_wait({})
    (sent,) = manual(app).take()
    bad = dataclasses.replace(sent.task, payload=payload)
    result = await manual(app).deliver(Sent(uuid.uuid4().hex, bad))
    if isinstance(payload, dict):  # a MageFlow-shaped message: it runs the node, once
        assert result == 2
        assert await sig.get_status() is SignatureStatus.DONE
    else:  # not an object: dropped with a warning, the real delivery still runs it
        assert result is None
        assert await manual(app).deliver(sent) == 2
    assert await manual(app).deliver(sent) is None  # and never twice
    assert app.ran == [("inc", 1)]  # type: ignore[attr-defined]


# -- item 11: wait() on unknown keys ------------------------------------------------------
async def test_wait_on_an_unknown_key_raises_and_writes_nothing(app: Mageflow) -> None:
    sig = await app.sign("inc")
    wf, _ = split_key(sig.key)
    ghost = f"{uuid.uuid4().hex[:16]}.r"
    with pytest.raises(SignatureNotFoundError, match="unknown or expired"):
        await app.engine.wait(ghost, timeout=30)
    assert await ttl_of(app, app.store.hash_key(split_key(ghost)[0])) == -2
    # an unknown node of an existing workflow: refused, nothing added to its hash
    with pytest.raises(SignatureNotFoundError):
        await app.engine.wait(f"{wf}.r.9", timeout=30)
    assert "r.9:waited" not in await app.store.read_all(wf)
    assert 0 < await ttl_of(app, app.store.hash_key(wf)) <= 500


# -- item 13: leaks and untyped errors ------------------------------------------------------
async def test_workflow_index_expires_and_drops_old_entries(app: Mageflow) -> None:
    index = f"{app.store.prefix}:index"
    old = "0" * 16
    store = app.store
    if isinstance(store, RedisStore):
        await store.client.zadd(index, {old: 1.0})  # created in 1970: long expired
    else:
        assert isinstance(store, MemoryStore)
        store.keyspace.zadd(index, [(1.0, old)])
    sig = await app.chain(["inc"])
    listed = await app.store.list_workflows()
    assert split_key(sig.key)[0] in listed
    assert old not in listed
    assert 0 < await ttl_of(app, index) <= 500


async def test_nested_lists_take_the_finished_ttl_with_their_root(app: Mageflow) -> None:
    inner = await app.swarm(["inc"], is_swarm_closed=True)
    chain = await app.chain([inner, "inc"])
    wf, _ = split_key(chain.key)
    await chain.aio_run_no_wait({"n": 1})
    while sent := manual(app).take():
        for s in sent:
            await manual(app).deliver(s)
    assert await chain.get_status() is SignatureStatus.DONE
    h = app.store.hash_key(wf)
    assert 0 < await ttl_of(app, h) <= 50
    for kind in ("steps:r", "items:r.0"):
        assert 0 < await ttl_of(app, f"{h}:{kind}") <= 50, kind


async def test_lists_of_steps_never_started_take_the_finished_ttl(app: Mageflow) -> None:
    """The root ends (canceled) before its second step, a swarm with a chain as its item
    and a swarm as its callback, ever started: none of their lists keeps the active TTL."""
    item = await app.chain(["inc"])
    callback = await app.swarm(["inc"], is_swarm_closed=True)
    later = await app.swarm([item], is_swarm_closed=True, success_callbacks=[callback])
    chain = await app.chain(["inc", later])
    wf, _ = split_key(chain.key)
    await chain.aio_run_no_wait({})
    manual(app).take()
    await chain.cancel()
    h = app.store.hash_key(wf)
    for kind in ("steps:r", "items:r.1", "items:r.1.s0"):
        assert 0 < await ttl_of(app, f"{h}:{kind}") <= 50, kind
    (item_sid,) = await app.store.read_list(wf, "items:r.1")
    assert 0 < await ttl_of(app, f"{h}:steps:{item_sid}") <= 50


@pytest.mark.parametrize("bad", [None, 5, 1.5, object()])
async def test_something_that_is_not_a_task_is_a_typed_error(app: Mageflow, bad: Any) -> None:
    for build in (
        lambda: app.swarm([bad]),
        lambda: app.chain(["inc", bad]),
        lambda: app.sign("inc", success_callbacks=[bad]),
        lambda: app.sign(bad),
    ):
        with pytest.raises(InvalidTaskError, match=r"expected a signature|needs a task"):
            await build()
    assert await app.store.list_workflows() == []


async def test_names_that_are_not_text_are_refused(app: Mageflow) -> None:
    with pytest.raises(InvalidNameError, match="surrogate"):
        await app.chain(["inc"], name="bad\ud800name")
    with pytest.raises(InvalidNameError, match="surrogate"):
        await app.swarm(["inc"], task_name="\udfff")
    with pytest.raises(InvalidNameError):
        await app.sign("\ud800")
    with pytest.raises(InvalidNameError):
        app.task("x\ud800")(lambda msg: msg)
    assert await app.store.list_workflows() == []


async def test_surrogates_in_kwargs_round_trip(app: Mageflow) -> None:
    sig = await app.sign("inc", n=2, text="\ud800")
    await sig.aio_run_no_wait({"more": "\udfff"})
    (sent,) = manual(app).take()
    assert await manual(app).deliver(sent) == 3
