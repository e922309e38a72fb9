"""The coalescer (``mageflow.engine.coalesce``) across event loops: a loop closed with
calls in flight (a thread's loop dropped, a test's loop torn down) must not leave a key
that a call on another loop would wait on for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mageflow.engine.coalesce import Coalescer


def test_a_loop_closed_mid_call_leaves_nothing_for_the_next_loop_to_wait_for() -> None:
    """A loop closed with a call in flight and another waiting for it (its tasks never
    cancelled, as when a thread's loop is dropped): a call for the same key on a new loop
    goes out at once."""

    async def slow(key: str, items: Sequence[str]) -> list[str]:
        await asyncio.sleep(10 if items[0] == "stuck" else 0)
        return list(items)

    batches: Coalescer[str, str] = Coalescer(slow)
    old = asyncio.new_event_loop()

    async def abandon() -> list[asyncio.Task[str]]:
        tasks = [
            asyncio.create_task(batches("wf", "stuck")),
            asyncio.create_task(batches("wf", "w")),
        ]
        await asyncio.sleep(0.01)
        return tasks

    abandoned = old.run_until_complete(abandon())
    assert not any(t.done() for t in abandoned)
    old.close()

    async def again() -> str:
        return await asyncio.wait_for(batches("wf", "next"), 5)

    assert asyncio.run(again()) == "next"
