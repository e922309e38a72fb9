"""Property-based test of ``retry``: random nested workflows (the strategy and the broker
model of test_engine_properties.py) fail, then are retried round after round while their
broken tasks are fixed a few at a time, with deliveries in random order and stale
redeliveries of earlier runs thrown in.

In every round, from the statuses at its start (right after the retry) and at its end:

* a task's user code runs exactly once if the task newly ended in the round, else never
  (a done task never runs again; a stale redelivery is dropped or is the re-run);
* a node's success / error callbacks run in the round exactly when it newly ended done /
  failed (error callbacks are re-armed, success callbacks fire once, on the success);
* nothing dispatched is left for the reconciler to re-send (every re-dispatch went out).

Once every task is fixed, every root ends done, and every done chain and swarm holds its
steps' / items' results.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore
from tests.core import test_engine_properties as props
from tests.core.test_engine_properties import _SETTINGS, TERMINAL, LeafFailed, World, workflows

IN_PROCESS_EXAMPLES = int(os.environ.get("MAGEFLOW_RERUN_PROPERTY_EXAMPLES", "300"))
REDIS_EXAMPLES = int(os.environ.get("MAGEFLOW_RERUN_PROPERTY_REDIS_EXAMPLES", "40"))
ROUNDS = 4
fault_dir = props.fault_dir  # the fixture: where the workers read fault files


class RetryWorld(World):
    """The property test's world, whose leaves fail while their tag is ``broken``."""

    def __init__(self, data: st.DataObject, store: StateStore, fault_dir: Path) -> None:
        super().__init__(data, store, False, fault_dir)
        self.round = 0
        self.runs: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.broken: set[str] = set()

    async def _leaf(self, msg: dict[str, Any]) -> Any:
        tag = msg["tag"]
        self.runs[tag][self.round] += 1
        if tag in self.broken:
            raise LeafFailed(f"boom {tag}")
        return tag

    async def shuffle(self) -> None:
        """A few deliveries in random order, and stale redeliveries of earlier runs."""
        while self.draw(st.integers(0, 3), "more?") < 3:
            if self.pending and self.draw(st.booleans(), "stale?") is False:
                m = self.pending.pop(self.draw(st.integers(0, len(self.pending) - 1), "msg"))
                await self.step(f"deliver {m.label}", lambda m=m: self.deliver(m))  # type: ignore[misc]
            elif self.history:
                m = self.pick(self.history, "stale msg")
                await self.step(f"stale {m.label}", lambda m=m: self.deliver(m))  # type: ignore[misc]

    def deferred(self, label: str, before: dict[str, str], start: dict[str, str]) -> bool:
        """Whether ``label`` waits to be reset under a composite swarm item that retry
        queued again (it resumes, resetting its failure path, once it gets a slot): a
        failed node, or a callback, on a path of failed nodes and callbacks up to a
        composite that was failed before the retry and is pending at the round's start.
        Its status at the round's start still shows the last round's outcome."""
        n = self.nodes[label]
        if start.get(label) not in TERMINAL or not (start[label] == "failed" or n.owner):
            return False
        cur = n
        while (up := cur.up) is not None:
            if before.get(up) == "failed" and start.get(up) == "pending":
                return True
            # the path goes on through failed nodes; from a callback, through its owner
            # unless that owner succeeded (its done callbacks are not on a failure path)
            if start.get(up) != "failed" and (cur.owner is None or start.get(up) == "done"):
                return False
            cur = self.nodes[up]
        return False

    def check_round(
        self, k: int, start: dict[str, str], end: dict[str, str], before: dict[str, str]
    ) -> None:
        def newly(label: str, statuses: frozenset[str]) -> bool:
            if self.deferred(label, before, start):
                return end.get(label) in statuses
            return end.get(label) in statuses and start.get(label) not in statuses

        for n in self.live_nodes():
            lb = n.label
            if n.spec.kind == "task":
                want = 1 if newly(lb, TERMINAL) else 0
                if self.deferred(lb, before, start) and end.get(lb) == start.get(lb):
                    want = self.runs[lb][k] if self.runs[lb][k] <= 1 else 1  # at most once
                if self.runs[lb][k] != want:
                    self.fail(f"round {k}: {lb} ran {self.runs[lb][k]} times, expected {want}")
            if n.spec.kind == "swarm" and n.spec.sa is not None:
                # the failure budget counts the failures of this round only
                nf = sum(newly(i, frozenset({"failed"})) for i in n.children)
                stopped = newly(lb, frozenset({"failed"}))
                if stopped != (nf >= n.spec.sa) and newly(lb, TERMINAL):
                    self.fail(f"round {k}: swarm {lb} (sa={n.spec.sa}) {end[lb]} at {nf} failures")
            for kind, cbs in (("done", n.ok), ("failed", n.err)):
                owed = newly(lb, frozenset({kind}))
                for cb in cbs:
                    if newly(cb, TERMINAL) != owed:
                        self.fail(
                            f"round {k}: {kind} callback {cb} of {lb} "
                            f"({start.get(lb)} -> {end.get(lb)}) ran: {not owed}"
                        )

    async def check_results(self) -> None:
        states = {n.label: await n.handle.get_state() for n in self.live_nodes()}

        def res(label: str) -> Any:
            s = states[label]
            return s.result if s.status.value == "done" else {"mageflow_error": s.error}

        for r in self.roots:
            if states[r].status.value != "done":
                self.fail(f"root {r} ended {states[r].status.value} with every task fixed")
        for n in self.live_nodes():
            if states[n.label].status.value != "done" or not n.children:
                continue
            got = states[n.label].result
            if n.spec.kind == "swarm" and got != [res(i) for i in n.children]:
                self.fail(f"swarm {n.label} result {got}, items say {[res(i) for i in n.children]}")
            if n.spec.kind == "chain" and got != res(n.children[-1]):
                self.fail(f"chain {n.label} result {got} is not its last step's")

    async def play_retries(self) -> None:
        tasks = [n.label for n in self.live_nodes() if n.spec.kind == "task"]
        # more failures than the spec draws, so that most examples have something to retry
        self.broken = {
            lb for lb in tasks if self.nodes[lb].spec.fails or self.draw(st.booleans(), "broken")
        }
        await self.drain()
        self.check_round(0, {}, dict(self.status), {})
        for k in range(1, ROUNDS + 1):
            failed = [r for r in self.roots if self.status[r] == "failed"]
            if not failed:
                break
            fixed = (
                sorted(self.broken)
                if k == ROUNDS
                else self.draw(
                    st.lists(st.sampled_from(sorted(self.broken)), unique=True)
                    if self.broken
                    else st.just([]),
                    "fixed",
                )
            )
            self.broken -= set(fixed)
            self.round = k
            before = dict(self.status)
            for r in failed:
                await self.step(f"retry {r}", lambda r=r: self.nodes[r].handle.retry())  # type: ignore[misc]
            start = dict(self.status)
            await self.shuffle()
            await self.drain()
            self.check_round(k, start, dict(self.status), before)
            event(f"retried in round {k}")
        await self.check_results()


async def _play(data: st.DataObject, store: StateStore, fault_dir: Path) -> None:
    world = RetryWorld(data, store, fault_dir)
    try:
        await world.setup(data.draw(workflows(), label="workflows"))
        await world.play_retries()
    finally:
        await world.mf.aclose()


SHARDS = 2
"""The in-process examples run as this many tests (see test_engine_properties.SHARDS)."""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=max(IN_PROCESS_EXAMPLES // SHARDS, 1), **_SETTINGS)
@given(data=st.data())
def test_retry_properties_in_process(fault_dir: Path, shard: int, data: st.DataObject) -> None:
    asyncio.run(_play(data, MemoryStore(), fault_dir))


@pytest.mark.timeout(900)
@settings(max_examples=REDIS_EXAMPLES, **_SETTINGS)
@given(data=st.data())
def test_retry_properties_on_redis(
    redis_url: str,
    fault_dir: Path,
    data: st.DataObject,
) -> None:
    store = RedisStore(redis_url, prefix=f"rrp-{uuid.uuid4().hex[:8]}")
    asyncio.run(_play(data, store, fault_dir))
