"""The worker's first-delivery path, driven through the real wrapper: a backend whose
messages are entries of a stream on the store's Redis (a test double of a stream broker:
the test reads the entries the engine appended and delivers them), so the engine writes
each first dispatch's start reply into its message and a first delivery runs at once,
its start recorded with its finish (one store round trip)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from mageflow import Mageflow
from mageflow.backend.base import HEADER_KEY, OutgoingTask, StreamDelivery
from mageflow.flows import lease
from mageflow.models.status import SignatureStatus
from mageflow.store import RedisStore
from mageflow.store.redis import server_identity
from mageflow.testing.manual import ManualBackend, Sent

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEMPLATE = ('{"id":', "id", ',"task":', "task", ',"payload":', "payload", ',"key":', "key", "}")


class StreamManual(ManualBackend):
    """ManualBackend whose messages the engine appends to ``stream`` itself."""

    def __init__(self, server: str, stream: str) -> None:
        super().__init__()
        self.server, self.stream = server, stream

    def stream_delivery(self) -> StreamDelivery:
        return StreamDelivery(
            server=self.server,
            default_stream=self.stream,
            routed_prefix=f"{self.stream}.",
            default_template=TEMPLATE,
            routed_template=TEMPLATE,
        )


@pytest_asyncio.fixture(loop_scope="session")
async def app(redis_url: str) -> AsyncIterator[Mageflow]:
    store = RedisStore(redis_url, prefix=f"fd-{uuid.uuid4().hex[:6]}")
    stream = f"fd-stream-{uuid.uuid4().hex[:6]}"
    server = server_identity(aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs)
    mf = Mageflow(backend=StreamManual(server, stream), store=store)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]
    ran: list[Any] = []

    @mf.task("fd.step")
    async def step(msg: dict[str, Any]) -> Any:
        ran.append(msg)
        return msg.get("mageflow_results", msg.get("x", 0)) + 1

    mf.ran = ran  # type: ignore[attr-defined]
    yield mf
    await mf.aclose()


async def appended(app: Mageflow, redis_url: str) -> list[Sent]:
    """The messages the engine appended since the last call, as deliverable ``Sent``."""
    backend = app.backend
    assert isinstance(backend, StreamManual)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = await client.xrange(backend.stream)
        if entries:
            await client.xdel(backend.stream, *(entry_id for entry_id, _ in entries))
    finally:
        await client.aclose()
    out = []
    for _, fields in entries:
        msg = json.loads(fields["data"])
        task = OutgoingTask(msg["task"], msg["payload"], {HEADER_KEY: msg["key"]})
        out.append(Sent(msg["id"], task))
    return out


async def deliver(app: Mageflow, sent: Sent, *, first: bool) -> Any:
    backend = app.backend
    assert isinstance(backend, StreamManual)
    definition = backend.definitions[sent.task.task_name]
    from mageflow.backend.base import RunContext

    ctx = RunContext(
        task_name=definition.name,
        run_id=sent.run_id,
        attempt=1,
        is_final_attempt=True,
        headers=dict(sent.task.headers),
        first_delivery=first,
    )
    return await definition.handler(dict(sent.task.payload), ctx)


async def test_the_engine_appends_first_dispatches_with_their_start_reply(
    app: Mageflow, redis_url: str
) -> None:
    assert app.engine.delivery
    wf = await app.chain(["fd.step", "fd.step"])
    await wf.aio_run_no_wait({"x": 1})
    assert app.backend.take() == []  # type: ignore[attr-defined]  # nothing for the client
    (first,) = await appended(app, redis_url)
    assert set(first.task.payload["fold"]) == {"t", "task", "kw", "ids"}
    await deliver(app, first, first=True)
    (second,) = await appended(app, redis_url)
    await deliver(app, second, first=True)
    assert await wf.wait(timeout=5) == 3
    assert [m.get("mageflow_results", m.get("x")) for m in app.ran] == [1, 2]  # type: ignore[attr-defined]


async def test_a_first_delivery_runs_before_its_start(app: Mageflow, redis_url: str) -> None:
    """The observable difference: a workflow canceled after the dispatch. A first
    delivery has already run its user code when its finish learns of the cancel (and
    records nothing); a redelivery asks first and never runs."""
    for first, runs in ((False, 0), (True, 1)):
        app.ran.clear()  # type: ignore[attr-defined]
        sig = await app.sign("fd.step")
        await sig.aio_run_no_wait({"x": 1})
        (sent,) = await appended(app, redis_url)
        await sig.cancel()
        await deliver(app, sent, first=first)
        assert len(app.ran) == runs  # type: ignore[attr-defined]
        assert (await sig.get_state()).status is SignatureStatus.CANCELED


async def test_a_stale_or_foreign_first_delivery_asks_first(app: Mageflow, redis_url: str) -> None:
    """Not trusted: a message older than half of resend_after (the reconciler may have
    sent a copy), or naming another task than its dispatch."""
    sig = await app.sign("fd.step")
    await sig.aio_run_no_wait({"x": 1})
    (sent,) = await appended(app, redis_url)
    sent.task.payload["fold"]["t"] -= int(app.engine.resend_after * 1000)
    await sig.cancel()
    app.ran.clear()  # type: ignore[attr-defined]
    await deliver(app, sent, first=True)
    assert app.ran == []  # type: ignore[attr-defined]  # it asked: canceled, dropped


async def _evalsha_calls(redis_url: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    # an engine call is EVALSHA, or FCALL on a server that runs the engine as a function
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "fcall"))


async def test_a_short_first_delivery_costs_one_call_a_long_one_shows_as_running(
    app: Mageflow, redis_url: str
) -> None:
    """The renewer waits FIRST_START_AFTER before doing anything: a task that ends sooner
    is recorded by its finish alone; one that runs longer takes its start meanwhile (it
    shows as active, holding its lease) and then finishes as usual."""
    release = asyncio.Event()

    @app.task("fd.slow")
    async def slow(msg: dict[str, Any]) -> str:
        await release.wait()
        return "slow"

    sig = await app.sign("fd.step")
    await sig.aio_run_no_wait({"x": 1})
    (sent,) = await appended(app, redis_url)
    before = await _evalsha_calls(redis_url)
    assert await deliver(app, sent, first=True) == 2
    assert await _evalsha_calls(redis_url) - before == 1  # the finish, with the start
    assert (await sig.get_state()).status is SignatureStatus.DONE

    sig = await app.sign("fd.slow")
    await sig.aio_run_no_wait({})
    (sent,) = await appended(app, redis_url)
    running = asyncio.create_task(deliver(app, sent, first=True))
    for _ in range(200):  # its start is taken FIRST_START_AFTER s after the delivery
        await asyncio.sleep(lease.FIRST_START_AFTER)
        if (await sig.get_state()).status is SignatureStatus.ACTIVE:
            break
    assert (await sig.get_state()).status is SignatureStatus.ACTIVE
    assert not running.done()
    release.set()
    assert await running == "slow"
    assert (await sig.get_state()).status is SignatureStatus.DONE


async def test_a_first_delivery_started_when_its_user_code_began(
    app: Mageflow, redis_url: str
) -> None:
    """Its start is recorded by its finish, as of when its user code began: its started
    time and its duration statistic are the run's, not zero. Alone (the general path) and
    as a swarm's items (the lean finish for the first item, the general path for the one
    that completes the swarm)."""

    @app.task("fd.slow")
    async def slow(msg: dict[str, Any]) -> int:
        await asyncio.sleep(0.1)
        return 1

    sig = await app.sign("fd.slow")
    swarm = await app.swarm_of("fd.slow", [{}, {}], is_swarm_closed=True)
    await swarm.aio_run_no_wait({})
    await sig.aio_run_no_wait({})
    ran = 0
    while ran < 3:
        batch = await appended(app, redis_url)
        assert batch, f"stalled after {ran} deliveries"
        for sent in batch:
            await deliver(app, sent, first=True)
            ran += 1
    assert await swarm.wait(timeout=5) == [1, 1]
    items = (await swarm.get_state()).children
    for key in [sig.key, *items]:
        state = await (await app.load(key)).get_state()
        assert state.started_at is not None and state.finished_at is not None
        assert (state.finished_at - state.started_at).total_seconds() >= 0.09, key
    stats = await app.stats()
    slow_stats = stats.tasks["fd.slow"]
    assert slow_stats.done == 3
    assert slow_stats.mean_s is not None and slow_stats.mean_s >= 0.09
