"""The run record (``F.RECORD``): a node's status, send and start times, attempts, end time
and run id kept in one hash field, and the workflows built before it (one field each),
which the same engine keeps running in their own layout. On both hosts of the script."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.models.status import SignatureStatus
from tests.core.stores import drain, manual, workflow_records

pytestmark = pytest.mark.asyncio(loop_scope="session")

PLAIN_PARTS = list(F.RECORD_PARTS)


@pytest_asyncio.fixture(loop_scope="session")
async def app(manual_app: Mageflow) -> Any:
    @manual_app.task("rec.step")
    async def step(msg: dict[str, Any]) -> Any:
        return msg.get("mageflow_results", msg.get("x", 0)) + 1

    @manual_app.task("rec.item")
    async def item(msg: dict[str, Any]) -> Any:
        return msg.get("n", 0) * 2

    manual_app.engine.packed_state = True
    yield manual_app
    manual_app.engine.packed_state = True


def _node_sids(records: dict[str, str]) -> list[str]:
    return [f for f in records if ":" not in f and f != F.LAYOUT]


async def test_a_node_keeps_its_run_state_in_one_record(app: Mageflow) -> None:
    wf = await app.chain(["rec.step", "rec.step"])
    await wf.aio_run_no_wait({"x": 1})
    await drain(app)
    records = await workflow_records(app, wf.key)
    assert records[F.LAYOUT] == F.PACKED
    sids = _node_sids(records)
    assert len(sids) == 3  # the chain and its two steps
    for sid in sids:
        assert F.of(sid, F.RECORD) in records, sid
        assert not [p for p in PLAIN_PARTS if F.of(sid, p) in records], sid
    steps = [s for s in sids if s != "r"]
    for sid in steps:
        status, attempts, sent, started, ended, run_id = F.node_state(
            records,
            split_key(wf.key)[0],
            sid,
            [F.STATUS, F.ATTEMPTS, F.SENT, F.STARTED, F.ENDED, F.RUN_ID],
        )
        assert (status, attempts) == ("done", "1")
        assert sent and started and ended and run_id
        assert int(sent) <= int(started) <= int(ended)
    assert (await (await app.load(wf.key)).get_state()).status is SignatureStatus.DONE


async def test_a_run_id_holding_the_separator_round_trips(app: Mageflow) -> None:
    wf = await app.chain(["rec.step", "rec.step"])
    await wf.aio_run_no_wait({"x": 1})
    (sent,) = manual(app).take()
    rid = "w|1|x|"
    first = await app.engine.finish(sent.key, True, "2", first_run=rid)
    assert not first.duplicate
    wf_id, sid = split_key(sent.key)
    run_id, attempts, status = await F.read_node(
        app.store, wf_id, sid, [F.RUN_ID, F.ATTEMPTS, F.STATUS]
    )
    assert (run_id, attempts, status) == (rid, "1", "done")
    # the same run delivered again is recognised by that id: nothing new is dispatched
    again = await app.engine.finish(sent.key, True, "2", first_run=rid)
    assert again.duplicate
    assert [p.key for p in again.publishes] == [p.key for p in first.publishes]
    manual(app).take()


async def test_a_workflow_of_the_earlier_layout_runs_in_its_own(app: Mageflow) -> None:
    app.engine.packed_state = False  # a client of the engine before the run record
    try:
        failing = await app.sign("rec.item", n=1)
        wf = await app.chain(
            [
                "rec.step",
                await app.swarm_of(
                    "rec.item",
                    [{"n": i} for i in range(5)],
                    config=SwarmConfig(max_concurrency=2),
                    is_swarm_closed=True,
                ),
            ],
            error=[failing],
        )
    finally:
        app.engine.packed_state = True  # the workers run today's engine
    await wf.aio_run_no_wait({"x": 1})
    await drain(app)
    records = await workflow_records(app, wf.key)
    assert F.LAYOUT not in records
    assert not [f for f in records if f.endswith(":" + F.RECORD)]
    sids = _node_sids(records)
    assert len(sids) == 9  # chain, step, swarm, 5 items, the error callback
    done = [s for s in sids if records.get(F.of(s, F.STATUS)) == "done"]
    assert len(done) == 8  # all but the callback, which never ran
    assert records[F.of("r", F.STATUS)] == "done"
    for s in done:
        if s != "r":
            assert records.get(F.of(s, F.ENDED)), s


async def test_a_signature_of_the_earlier_layout_moves_into_a_new_workflow(
    app: Mageflow,
) -> None:
    app.engine.packed_state = False
    try:
        old = await app.sign("rec.step", x=4)
    finally:
        app.engine.packed_state = True
    wf = await app.chain([old, "rec.step"])
    await wf.aio_run_no_wait({})
    await drain(app)
    records = await workflow_records(app, wf.key)
    assert records[F.LAYOUT] == F.PACKED
    assert not [f for f in records if f.endswith(":" + F.STATUS)]
    wf_id = split_key(wf.key)[0]
    statuses = [F.node_state(records, wf_id, s, [F.STATUS])[0] for s in _node_sids(records)]
    assert statuses == ["done"] * 3


async def test_items_added_to_a_swarm_are_stored_in_its_layout(app: Mageflow) -> None:
    for packed in (True, False):
        app.engine.packed_state = packed
        try:
            sw = await app.swarm(tasks=[], config=SwarmConfig(max_concurrency=2))
        finally:
            app.engine.packed_state = True
        one = await sw.add_task("rec.item", n=3)
        more = await sw.add_tasks("rec.item", [{"n": 1}, {"n": 2}])
        records = await workflow_records(app, sw.key)
        for item in [one, *more]:
            sid = split_key(item.key)[1]
            stored = {f for f in records if f.startswith(sid + ":")}
            expect = F.of(sid, F.RECORD) if packed else F.of(sid, F.STATUS)
            assert expect in stored, (packed, stored)
            assert records[expect] == "pending"
            assert F.of(sid, F.STATUS if packed else F.RECORD) not in stored
            assert await item.get_status() is SignatureStatus.PENDING
        await sw.close_swarm()
        await sw.aio_run_no_wait({})
        await drain(app)
        assert await sw.get_status() is SignatureStatus.DONE


async def test_a_record_keeps_what_is_present() -> None:
    assert F.unpack_record("pending", "w.r") == {F.STATUS: "pending"}
    assert F.unpack_record("active|10||2", "w.r") == {
        F.STATUS: "active",
        F.SENT: "10",
        F.ATTEMPTS: "2",
    }
    assert F.unpack_record("done|1|2|1|3|a|b", "w.r") == {
        F.STATUS: "done",
        F.SENT: "1",
        F.STARTED: "2",
        F.ATTEMPTS: "1",
        F.ENDED: "3",
        F.RUN_ID: "a|b",
    }


async def test_a_record_keeps_its_own_run_ids_short() -> None:
    assert F.unpack_record("done|1000|1003|1|1005|~7", "w.r.i1") == {
        F.STATUS: "done",
        F.SENT: "1000",
        F.STARTED: "1003",
        F.ATTEMPTS: "1",
        F.ENDED: "1005",
        F.RUN_ID: "w.r.i1.7",
    }
    assert F.unpack_record("active|1000||1||~~x|", "w.r")[F.RUN_ID] == "~x|"


@pytest.mark.parametrize(
    "run_id", ["{wf}.{sid}.12", "{wf}.{sid}.012", "{wf}.{sid}.x", "~{sid}", "~~", "other.1"]
)
async def test_a_run_id_round_trips_whatever_it_looks_like(app: Mageflow, run_id: str) -> None:
    wf = await app.chain(["rec.step", "rec.step"])
    await wf.aio_run_no_wait({"x": 1})
    (sent,) = manual(app).take()
    wf_id, sid = split_key(sent.key)
    rid = run_id.format(wf=wf_id, sid=sid)
    assert (await app.engine.start(sent.key, rid, "rec.step")).action == "run"
    assert not (await app.engine.finish(sent.key, True, "2")).duplicate
    stored = (await workflow_records(app, wf.key))[F.of(sid, F.RECORD)]
    started, ended, got, sent_at = await F.read_node(
        app.store, wf_id, sid, [F.STARTED, F.ENDED, F.RUN_ID, F.SENT]
    )
    assert got == rid
    assert sent_at and started and ended and int(sent_at) <= int(started) <= int(ended)
    if run_id in ("{wf}.{sid}.12",):  # the stream delivery's form, of this node: short
        assert stored.endswith("|~12") and len(stored) < 60, stored
    # the engine reads it back too: a copy of the same run is recognised as one
    assert (await app.engine.start(sent.key, rid, "rec.step")).action != "run"
