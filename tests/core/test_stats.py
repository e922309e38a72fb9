"""Statistics kept by the transitions (``mf.stats()``), and swarm counts that stay true
after suspend, interrupt and cancel; on MemoryStore and a real Redis."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.errors import ConfigurationError
from mageflow.flows.stats import p95_of
from mageflow.models.status import SignatureStatus
from tests.core.stores import manual

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def app(manual_app: Mageflow) -> Mageflow:
    @manual_app.task("st.ok")
    async def ok(msg: dict[str, Any]) -> int:
        return 1

    @manual_app.task("st.bad", retries=1)
    async def bad(msg: dict[str, Any]) -> int:
        raise ValueError("boom")

    return manual_app


async def test_counts_per_task_and_workflow_and_a_duplicate_changes_nothing(app: Mageflow) -> None:
    ok = await app.sign("st.ok")
    await ok.aio_run_no_wait({})
    (m,) = manual(app).take()
    await manual(app).deliver(m)
    await manual(app).deliver(m)  # a duplicate delivery: no second count
    bad = await app.sign("st.bad")
    await bad.aio_run_no_wait({})
    (m,) = manual(app).take()
    with pytest.raises(ValueError):
        await manual(app).deliver(m, attempt=1, final=False)
    with pytest.raises(ValueError):
        await manual(app).deliver(m, attempt=2, final=True)

    stats = await app.stats()
    assert stats.tasks["st.ok"].model_dump(exclude={"mean_s", "p95_s"}) == {
        "started": 1,
        "retried": 0,
        "done": 1,
        "failed": 0,
    }
    assert stats.tasks["st.bad"].model_dump(exclude={"mean_s", "p95_s"}) == {
        "started": 2,
        "retried": 1,
        "done": 0,
        "failed": 1,
    }
    for t in stats.tasks.values():
        assert t.mean_s is not None and t.p95_s is not None and 0 <= t.mean_s <= t.p95_s + 0.01
    assert stats.workflows == {"started": 2, "done": 1, "failed": 1}


async def test_window_is_checked(app: Mageflow) -> None:
    with pytest.raises(ConfigurationError, match="window"):
        await app.stats(window=7200)


async def test_p95_is_read_from_the_histogram() -> None:
    assert p95_of({}) is None
    assert p95_of({1: 100}) == pytest.approx(0.00475)  # all <= 5 ms
    assert p95_of({1: 90, 8: 10}) == pytest.approx(0.75)  # 5 of 10 in (500, 1000] ms
    assert p95_of({0: 1}) == F.STATS_BOUNDS_MS[-1] / 1000


async def test_histogram_bounds_match_the_script() -> None:
    text = resources.files("mageflow.engine").joinpath("transitions.lua").read_text()
    found = re.search(r"M.STATS_BOUNDS = \{([^}]*)\}", text)
    assert found is not None
    assert tuple(int(x) for x in found.group(1).split(",")) == F.STATS_BOUNDS_MS


async def capped_swarm(app: Mageflow, n: int) -> Any:
    items = [await app.sign("st.ok") for _ in range(n)]
    sw = await app.swarm(items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
    await sw.aio_run_no_wait({})
    return sw


async def test_canceled_swarm_counts_nothing_queued_or_running(app: Mageflow) -> None:
    sw = await capped_swarm(app, 6)
    sent = manual(app).take()
    assert len(sent) == 2
    assert (await app.engine.start(sent[0].key, sent[0].run_id)).action == "run"
    assert (await sw.get_state()).counts["queued"] == 4
    await sw.cancel()
    counts = (await sw.get_state()).counts
    assert counts["queued"] == 0 and counts["running"] == 0
    assert counts["canceled"] == 6
    assert (await app.stats()).workflows.get("canceled") == 1


async def test_interrupted_swarm_shows_its_items_held_not_running(app: Mageflow) -> None:
    sw = await capped_swarm(app, 4)
    sent = manual(app).take()
    for m in sent:
        assert (await app.engine.start(m.key, m.run_id)).action == "run"
    assert (await sw.get_state()).counts["running"] == 2
    await app.engine.suspend(sw.key, interrupt=True, can_cancel=True)
    counts = (await sw.get_state()).counts
    assert counts["running"] == 0 and counts["held"] == 2 and counts["queued"] == 2
    await sw.resume()
    counts = (await sw.get_state()).counts
    assert counts["running"] == 2 and "held" not in counts
    for _ in range(3):
        for m in manual(app).take():
            await manual(app).deliver(m)
    state = await sw.get_state()
    assert state.status is SignatureStatus.DONE
    assert state.counts["done"] == 4 and state.counts["running"] == 0


async def test_suspended_swarm_shows_a_delivery_it_held(app: Mageflow) -> None:
    sw = await capped_swarm(app, 3)
    sent = manual(app).take()
    await sw.suspend()
    assert (await app.engine.start(sent[0].key, sent[0].run_id)).action == "held"
    counts = (await sw.get_state()).counts
    assert counts["held"] == 1 and counts["running"] == 1


async def test_buckets_expire_an_hour_after_their_minute(app: Mageflow, redis_url: str) -> None:
    """Bounded memory: every bucket the transitions write carries its TTL."""
    from mageflow.store import RedisStore

    if not isinstance(app.store, RedisStore):
        pytest.skip("the TTL is read from Redis")
    await (await app.sign("st.ok")).aio_run_no_wait({})
    for m in manual(app).take():
        await manual(app).deliver(m)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{app.store.stats_key}:*")]
        assert keys
        for key in keys:
            assert 3600 <= await client.ttl(key) <= 3660
    finally:
        await client.aclose()
