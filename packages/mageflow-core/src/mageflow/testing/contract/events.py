"""Streamed events: ``wf.events()`` yields a nested workflow's state changes in order."""

from __future__ import annotations

import asyncio

from mageflow.models.events import StreamedEvent
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class EventsContract(ContractBase):
    """Streamed events: pushed by the transitions, in order, ending at the terminal one."""

    async def test_events_observed_in_order_for_a_nested_workflow(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        swarm = await app.swarm(
            tasks=[await app.sign("contract.double", ns=ns) for _ in range(2)],
            is_swarm_closed=True,
        )
        wf = await app.chain(
            [await app.sign("contract.add", ns=ns), swarm, await app.sign("contract.total", ns=ns)]
        )
        live: list[StreamedEvent] = []

        async def follow() -> None:
            async for event in wf.events():
                live.append(event)

        reader = asyncio.create_task(follow())  # subscribed before the run
        assert await wf.aio_run({"ns": ns, "x": 1, "y": 2}, timeout=harness.timeout) == 12
        await asyncio.wait_for(reader, harness.timeout)
        replayed = [e async for e in wf.events()]  # a late subscriber misses nothing
        assert [e.id for e in replayed] == [e.id for e in live]

        order = [(e.key, e.event) for e in live]
        assert order[0] == (wf.key, "started") and order[-1] == (wf.key, "done")
        steps = (await wf.get_state()).children
        items = (await swarm.get_state()).children

        def at(key: str, event: str) -> int:
            return order.index((key, event))

        assert at(steps[0], "started") < at(steps[0], "done") < at(steps[1], "started")
        for item in items:
            assert at(steps[1], "started") < at(item, "started") < at(item, "done")
            assert at(item, "done") < at(steps[1], "done")
        assert at(steps[1], "done") < at(steps[2], "started") < at(steps[2], "done")
        assert len(order) == len(set(order))  # each change once, whatever the redeliveries
        assert {e.key for e in live} == {wf.key, *steps, *items}
        assert all(e.workflow == wf.key for e in live)
