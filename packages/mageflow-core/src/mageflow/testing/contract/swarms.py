"""Swarms and nesting: order, merge, concurrency cap, failures, add/close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mageflow.errors import (
    SwarmClosedError,
    TaskFailedError,
)
from mageflow.flows.handles import SwarmSignature
from mageflow.models.config import SwarmConfig
from mageflow.testing.contract.base import ContractBase, ContractHarness, _ns


class SwarmContract(ContractBase):
    """Swarms and nesting: order, merge, concurrency cap, failures, add/close."""

    async def test_swarm_results_in_item_order_callback_once(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        items = [
            await app.sign("contract.slow", id=i, seconds=0.05 * ((7 - i) % 4)) for i in range(8)
        ]
        sw = await app.swarm(
            items,
            success_callbacks=[done],
            config=SwarmConfig(max_concurrency=4),
            is_swarm_closed=True,
        )
        assert await sw.aio_run({"ns": ns}, timeout=harness.timeout) == list(range(8))
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == list(range(8))

    async def test_swarm_message_merge_item_wins(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        sw = await app.swarm(
            [await app.sign("contract.echo", a="item-kw", b="item-kw")], is_swarm_closed=False
        )
        await sw.aio_run_no_wait({"ns": ns, "a": "swarm", "b": "swarm", "s": 1})
        late = await sw.add_task("contract.echo", b="late-kw", c="late-kw")
        await late.aio_run_no_wait({"ns": ns, "c": "late-msg", "d": "late-msg"})
        await sw.close_swarm()
        results = await sw.wait(timeout=harness.timeout)
        assert results == [
            {"a": "item-kw", "b": "item-kw", "s": 1},
            {"a": "swarm", "b": "late-kw", "c": "late-msg", "d": "late-msg", "s": 1},
        ]

    @staticmethod
    async def _runs_capped_at_two(h: ContractHarness, sw: SwarmSignature, n: int) -> None:
        """``sw``'s ``contract.slow`` items ``0..n-1`` finish, never more than 2 at once."""
        assert h.worker_slots >= 3, "the harness must offer >= 3 worker slots"
        ns = _ns()
        assert await sw.aio_run({"ns": ns}, timeout=h.timeout) == list(range(n))
        observed = await h.probe.max_running(ns)
        assert observed == 2, f"observed {observed} items running at once with a cap of 2"

    async def test_swarm_never_exceeds_max_concurrency(self, harness: ContractHarness) -> None:
        app = harness.app
        items = [await app.sign("contract.slow", id=i, seconds=0.15) for i in range(12)]
        sw = await app.swarm(items, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
        await self._runs_capped_at_two(harness, sw, 12)

    async def test_swarm_stop_after_n_failures(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="err")
        on_ok = await app.sign("contract.collect", ns=ns, tag="ok")
        items = [await app.sign("contract.slow", id=i, fail=True) for i in range(2)]
        items += [await app.sign("contract.slow", id=10 + i, seconds=0.01) for i in range(6)]
        sw = await app.swarm(
            items,
            success_callbacks=[on_ok],
            error_callbacks=[on_error],
            config=SwarmConfig(max_concurrency=1, stop_after_n_failures=2),
            is_swarm_closed=True,
        )
        with pytest.raises(TaskFailedError) as info:
            await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        assert info.value.error_type == "SwarmFailed"
        (got,) = await self.events(harness, ns, "err", 1)
        assert got["mageflow_error"]["type"] == "SwarmFailed"
        assert await harness.probe.events(ns, "ok") == []
        assert await harness.probe.events(ns, "slow-done") == [], "queued items must not start"

    async def test_swarm_failures_without_stop_still_succeed(
        self, harness: ContractHarness
    ) -> None:
        ns = _ns()
        app = harness.app
        on_error = await app.sign("contract.collect", ns=ns, tag="err")
        items = [
            await app.sign("contract.slow", id=0),
            await app.sign("contract.slow", id=1, fail=True),
        ]
        sw = await app.swarm(items, error_callbacks=[on_error], is_swarm_closed=True)
        results = await sw.aio_run({"ns": ns}, timeout=harness.timeout)
        assert results[0] == 0
        assert results[1] == {"mageflow_error": {"type": "ValueError", "message": "item 1 failed"}}
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "err") == []

    async def test_add_task_then_close_completes_once(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        done = await app.sign("contract.collect", ns=ns, tag="done")
        sw = await app.swarm(
            success_callbacks=[done], is_swarm_closed=False, config=SwarmConfig(max_concurrency=2)
        )
        assert not await sw.is_swarm_closed()
        await sw.aio_run_no_wait({"ns": ns})
        for i in range(4):
            item = await sw.add_task("contract.slow", seconds=0.01)
            await item.aio_run_no_wait({"id": i})
        await asyncio.sleep(harness.settle)
        assert await harness.probe.events(ns, "done") == [], "open swarm must not complete"
        await sw.close_swarm()
        assert await sw.is_swarm_closed()
        (got,) = await self.events(harness, ns, "done", 1)
        assert got["mageflow_results"] == [0, 1, 2, 3]

    async def test_adding_to_closed_swarm_raises_and_changes_nothing(
        self, harness: ContractHarness
    ) -> None:
        app = harness.app
        sw = await app.swarm([await app.sign("contract.echo")], is_swarm_closed=True)
        before = await sw.get_state()
        with pytest.raises(SwarmClosedError):
            await sw.add_task("contract.echo")
        after = await sw.get_state()
        assert after.counts["total"] == before.counts["total"] == 1

    async def test_swarm_of_runs_like_signed_items(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        kwargs: list[dict[str, Any]] = [{"a": "item-kw", "i": i} for i in range(3)]
        kwargs.append({})
        results = []
        for build in ("signed", "bulk"):
            done = await app.sign("contract.collect", ns=ns, tag=build)
            options: dict[str, Any] = {"success_callbacks": [done], "is_swarm_closed": True}
            if build == "bulk":
                sw = await app.swarm_of("contract.echo", kwargs, **options)
            else:
                signed = [await app.sign("contract.echo", **kw) for kw in kwargs]
                sw = await app.swarm(signed, **options)
            results.append(await sw.aio_run({"ns": ns, "a": "swarm"}, timeout=harness.timeout))
            (got,) = await self.events(harness, ns, build, 1)
            assert got["mageflow_results"] == results[-1]
        assert results[0] == results[1]
        assert results[1] == [{"a": "item-kw", "i": i} for i in range(3)] + [{"a": "swarm"}]

    async def test_swarm_of_and_add_tasks_keep_the_cap(self, harness: ContractHarness) -> None:
        app = harness.app
        sw = await app.swarm_of(
            "contract.slow",
            [{"id": i, "seconds": 0.1} for i in range(4)],
            config=SwarmConfig(max_concurrency=2),
        )
        await sw.add_tasks("contract.slow", [{"id": i, "seconds": 0.1} for i in range(4, 8)])
        await sw.close_swarm()
        await self._runs_capped_at_two(harness, sw, 8)

    async def test_add_tasks_runs_like_add_task(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        results = []
        for build in ("one by one", "bulk"):
            done = await app.sign("contract.collect", ns=ns, tag=build)
            sw = await app.swarm(success_callbacks=[done])
            await sw.aio_run_no_wait({"ns": ns, "b": "swarm"})
            kwargs: list[dict[str, Any]] = [{"b": "item-kw", "i": i} for i in range(3)]
            if build == "bulk":
                added = await sw.add_tasks(app.tasks["contract.echo"].fn, kwargs)
            else:
                added = [await sw.add_task("contract.echo", **kw) for kw in kwargs]
            await added[1].aio_run_no_wait({"b": "own-msg", "c": "own-msg"})
            await sw.close_swarm()
            results.append(await sw.wait(timeout=harness.timeout))
            (got,) = await self.events(harness, ns, build, 1)
            assert got["mageflow_results"] == results[-1]
        assert results[0] == results[1]
        assert results[1] == [
            {"b": "item-kw", "i": 0},
            {"b": "own-msg", "c": "own-msg", "i": 1},
            {"b": "item-kw", "i": 2},
        ]

    async def test_add_tasks_to_closed_swarm_raises_and_changes_nothing(
        self, harness: ContractHarness
    ) -> None:
        app = harness.app
        sw = await app.swarm_of("contract.echo", [{"i": 0}], is_swarm_closed=True)
        with pytest.raises(SwarmClosedError):
            await sw.add_tasks("contract.echo", [{"i": 1}, {"i": 2}])
        assert (await sw.get_state()).counts["total"] == 1

    async def test_swarm_as_chain_step_hands_list_to_next(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        inner = await app.swarm(
            [await app.sign("contract.double", ns=ns) for _ in range(3)],
            config=SwarmConfig(max_concurrency=2),
            is_swarm_closed=True,
        )
        wf = await app.chain(
            [await app.sign("contract.add", ns=ns), inner, await app.sign("contract.total", ns=ns)]
        )
        assert await wf.aio_run({"ns": ns, "x": 1, "y": 1}, timeout=harness.timeout) == 12
        assert await harness.probe.events(ns, "total") == [[4, 4, 4]]

    async def test_chain_as_swarm_item(self, harness: ContractHarness) -> None:
        ns = _ns()
        app = harness.app
        chains = [
            await app.chain(
                [await app.sign("contract.add", x=i, y=i), await app.sign("contract.double", ns=ns)]
            )
            for i in range(3)
        ]
        sw = await app.swarm(chains, config=SwarmConfig(max_concurrency=2), is_swarm_closed=True)
        assert await sw.aio_run({"ns": ns}, timeout=harness.timeout) == [0, 4, 8]
