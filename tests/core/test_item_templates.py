"""Item templates (``F.TEMPLATE``): in a packed workflow the items a swarm is built with, or
that are added to it in bulk, keep no definition of their own; their swarm's template is
theirs, and an item exists while its run record does. On both hosts of the script."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import SignatureNotFoundError
from mageflow.models.status import SignatureStatus
from tests.core.stores import drain, workflow_records

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Any:
    @manual_app.task("tpl.item")
    async def item(msg: dict[str, Any]) -> Any:
        return msg.get("n", 0) * 2

    @manual_app.task("tpl.other")
    async def other(msg: dict[str, Any]) -> Any:
        return -msg.get("n", 0)

    @manual_app.task("tpl.step")
    async def step(msg: dict[str, Any]) -> Any:
        return msg.get("mageflow_results")

    manual_app.engine.packed_state = True
    yield manual_app
    manual_app.engine.packed_state = True


def _items(records: dict[str, str], swarm: str) -> list[str]:
    return sorted(
        f[: -len(":" + F.RECORD)]
        for f in records
        if f.endswith(":" + F.RECORD) and F.item_swarm(f[: -len(":" + F.RECORD)]) == swarm
    )


async def test_bulk_items_share_their_swarms_template(app: Mageflow) -> None:
    sw = await app.swarm_of(
        "tpl.item",
        [{"n": i} for i in range(6)],
        config=SwarmConfig(max_concurrency=2),
        is_swarm_closed=True,
    )
    records = await workflow_records(app, sw.key)
    items = _items(records, "r")
    assert len(items) == 6
    assert not [s for s in items if s in records]  # no definition of their own
    assert '"tpl.item"' in records[F.of("r", F.TEMPLATE)]
    handle = await app.load(f"{split_key(sw.key)[0]}.{items[0]}")
    assert (await handle.get_state()).status is SignatureStatus.PENDING
    await sw.aio_run_no_wait({})
    await drain(app)
    assert await sw.get_status() is SignatureStatus.DONE
    assert sorted(await sw.wait(5)) == [0, 2, 4, 6, 8, 10]
    assert await handle.wait(5) in {0, 2, 4, 6, 8, 10}
    state = await handle.get_state()
    assert state.status is SignatureStatus.DONE and state.attempts == 1


async def test_a_sid_that_only_looks_like_an_item_is_no_node(app: Mageflow) -> None:
    sw = await app.swarm_of("tpl.item", [{"n": 1}], is_swarm_closed=True)
    wf = split_key(sw.key)[0]
    ghost = f"{wf}.r.i0123456789abcdef"  # the swarm has a template, the id no record
    with pytest.raises(SignatureNotFoundError):
        await app.load(ghost)
    with pytest.raises(SignatureNotFoundError):
        await app.engine.wait(ghost, 1)
    before = await workflow_records(app, sw.key)
    assert (await app.engine.start(ghost, "run-1", "tpl.item")).action == "missing"
    finished = await app.engine.finish(ghost, True, "1")
    assert finished.duplicate and not finished.publishes
    assert await workflow_records(app, sw.key) == before  # nothing written for it


async def test_items_added_in_bulk_use_the_template_of_their_task(app: Mageflow) -> None:
    sw = await app.swarm(tasks=[], config=SwarmConfig(max_concurrency=3))
    first = await sw.add_tasks("tpl.item", [{"n": 1}, {"n": 2}])
    records = await workflow_records(app, sw.key)
    assert '"tpl.item"' in records[F.of("r", F.TEMPLATE)]  # the first batch's task
    # another task's items keep their own definitions; a signature added keeps its own
    others = await sw.add_tasks("tpl.other", [{"n": 3}])
    signed = await sw.add_task("tpl.item", n=4)
    records = await workflow_records(app, sw.key)
    own = {s for s in _items(records, "r") if s in records}
    assert own == {split_key(x.key)[1] for x in [*others, signed]}
    assert not {split_key(x.key)[1] for x in first} & own
    await sw.close_swarm()
    await sw.aio_run_no_wait({})
    await drain(app)
    assert await sw.wait(5) == [2, 4, -3, 8]


@pytest.mark.parametrize("packed_target", [True, False])
async def test_a_templated_swarm_moves_into_a_workflow(app: Mageflow, packed_target: bool) -> None:
    sw = await app.swarm_of("tpl.item", [{"n": 1}, {"n": 2}, {"n": 3}], is_swarm_closed=True)
    app.engine.packed_state = packed_target
    try:
        wf = await app.chain([sw, "tpl.step"])
    finally:
        app.engine.packed_state = True
    records = await workflow_records(app, wf.key)
    items = [f for f in records if F.item_swarm(f.partition(":")[0]) == "r.0"]
    assert items
    if packed_target:
        assert F.of("r.0", F.TEMPLATE) in records  # renamed with its swarm
        assert not [f for f in items if ":" not in f]
        assert '"p":"r.0"' in records[F.of("r.0", F.TEMPLATE)]
    else:  # the plain layout has no templates: each item gets its definition back
        assert F.of("r.0", F.TEMPLATE) not in records
        defs = {records[f] for f in items if ":" not in f}
        assert len([f for f in items if ":" not in f]) == 3 and len(defs) == 1
        assert '"p":"r.0"' in defs.pop()
    await wf.aio_run_no_wait({})
    await drain(app)
    assert await wf.wait(5) == [2, 4, 6]
