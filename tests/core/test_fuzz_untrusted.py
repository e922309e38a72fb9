"""Fuzzing the public API and the worker wrapper with malformed input (issue 13).

Hypothesis feeds keys (random text, lone surrogates, real keys bent into state-field
names, other types), task-likes, kwargs and messages to ``load`` / ``sign`` / running a
loaded signature, and messages with arbitrary task names, payloads and headers (real
keys among them) to the worker wrapper on the local backend: called directly, and
published to its workers. Checked:

* only typed errors: anything raised is a :class:`mageflow.errors.MageflowError`;
* the workers keep serving: afterwards, workflows built before the fuzzing run to their
  end on the same workers, and every message was processed (``join``);
* no workflow is corrupted: those workflows finish ``done``, each of their tasks' user
  code ran exactly once, and the swarm's results list every item.

``MAGEFLOW_FUZZ_EXAMPLES`` sets the number of in-process examples (default 200),
``MAGEFLOW_FUZZ_REDIS_EXAMPLES`` the number on a real Redis (default 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mageflow
from mageflow import Mageflow, SwarmConfig
from mageflow.backend.base import HEADER_KEY, OutgoingTask, RunContext
from mageflow.backend.local import LocalBackend
from mageflow.errors import MageflowError
from mageflow.models.status import SignatureStatus
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore

EXAMPLES = int(os.environ.get("MAGEFLOW_FUZZ_EXAMPLES", "200"))
REDIS_EXAMPLES = int(os.environ.get("MAGEFLOW_FUZZ_REDIS_EXAMPLES", "30"))
TASKS = ("fz.count", "fz.typed")

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
odd_text = st.text(max_size=24) | st.sampled_from(["\ud800", "a\udfffb", "{x}", "", ":", "."])


BENDS = (
    "{key}",
    "{key}:status",
    "{key}:kwargs",
    "{key}.0",
    "{key}.i0",
    "{wf}.r:s",
    "{wf}:r",
    "{key}\ud800",
    "{{{key}}}",
    "{upper}",
    "{wf}",
    "{wf}.",
)


@dataclass(frozen=True)
class Bent:
    """A real key (the ``which``-th of the example's workflows' keys) made into what a
    user or an attacker might pass instead (:data:`BENDS`); resolved when acted on, so the
    strategies do not depend on the random keys of one example."""

    which: int
    how: int

    def resolve(self, real: list[str]) -> str:
        key = real[self.which % len(real)]
        return BENDS[self.how].format(key=key, wf=key.partition(".")[0], upper=key.upper())


def resolved(value: Any, real: list[str]) -> Any:
    return value.resolve(real) if isinstance(value, Bent) else value


def keys() -> st.SearchStrategy[Any]:
    bent = st.builds(Bent, st.integers(0, 9), st.integers(0, len(BENDS) - 1))
    return st.one_of(bent, odd_text, st.integers(), st.none(), st.binary(max_size=8))


def task_likes() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(TASKS), odd_text, st.none(), st.integers(), st.floats())


def actions() -> st.SearchStrategy[tuple[Any, ...]]:
    own = {"task", "task_name", "task_identifiers", "success_callbacks", "error_callbacks"}
    names = st.text(min_size=1, max_size=6).filter(lambda n: n not in own | {"mageflow_options"})
    kwargs = st.dictionaries(names, json_values, max_size=3)
    headers = st.dictionaries(
        st.sampled_from([HEADER_KEY, "x"]) | st.text(max_size=4),
        keys() | json_values,
        max_size=2,
    )
    return st.one_of(
        st.tuples(st.just("load"), keys()),
        st.tuples(st.just("sign"), task_likes(), kwargs),
        st.tuples(st.just("run"), keys(), json_values),
        st.tuples(st.just("call"), st.sampled_from(TASKS) | odd_text, json_values, headers),
        st.tuples(st.just("publish"), st.sampled_from(TASKS) | odd_text, json_values, headers),
    )


def build_app(store: StateStore) -> tuple[Mageflow, Counter[str]]:
    mf = Mageflow(backend=LocalBackend(workers=2, concurrency=4), store=store)
    ran: Counter[str] = Counter()

    @mf.task("fz.count")
    async def count(msg: dict[str, Any]) -> int:
        ran[mageflow.current_task().key] += 1
        return 1

    from pydantic import BaseModel

    class Typed(BaseModel):
        n: int

    @mf.task("fz.typed", input_validator=Typed)
    async def typed(msg: Typed) -> int:
        ran[mageflow.current_task().key] += 1
        return msg.n

    return mf, ran


async def act(mf: Mageflow, drawn: tuple[Any, ...], real: list[str]) -> None:
    action = [resolved(a, real) for a in drawn]
    if drawn[0] in ("call", "publish"):
        action[3] = {k: resolved(v, real) for k, v in drawn[3].items()}
    op = action[0]
    if op == "load":
        await mf.load(action[1])
    elif op == "sign":
        await mf.sign(action[1], **action[2])
    elif op == "run":
        sig = await mf.load(action[1])
        await sig.aio_run_no_wait(action[2])
    else:
        _, name, payload, headers = action
        if op == "publish":
            await mf.backend.publish(OutgoingTask(name, payload, headers))
            return
        assert isinstance(mf.backend, LocalBackend)
        definition = mf.backend.definitions.get(name)
        handler = definition.handler if definition else mf.backend._fallback
        assert handler is not None
        ctx = RunContext(name, uuid.uuid4().hex, 1, True, headers)
        await handler(payload, ctx)


async def play(store: StateStore, data: Any) -> None:
    mf, ran = build_app(store)
    try:
        swarm = await mf.swarm(
            ["fz.count"] * 3, config=SwarmConfig(max_concurrency=1), is_swarm_closed=True
        )
        chain = await mf.chain(["fz.count", "fz.count"], success="fz.count")
        real = [swarm.key, chain.key]
        real += (await swarm.get_state()).children + (await chain.get_state()).children
        for action in data.draw(st.lists(actions(), max_size=8), label="actions"):
            with contextlib.suppress(MageflowError):  # typed: what a user can cause
                await act(mf, action, real)
        # the workers still serve, and the workflows built before are intact
        for wf in (swarm, chain):
            if await wf.get_status() is SignatureStatus.PENDING:
                await wf.aio_run_no_wait({})
        assert len(await swarm.wait(timeout=30)) == 3
        await chain.wait(timeout=30)
        assert isinstance(mf.backend, LocalBackend)
        await mf.backend.join(timeout=30)
        for key in real[2:]:
            assert await (await mf.load(key)).get_status() is SignatureStatus.DONE, key
            assert ran[key] == 1, (key, ran)
    finally:
        await mf.aclose()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_in_process(data: st.DataObject) -> None:
    asyncio.run(play(MemoryStore(), data))


@settings(
    max_examples=REDIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_on_redis(redis_url: str, data: st.DataObject) -> None:
    asyncio.run(play(RedisStore(redis_url, prefix=f"fz-{uuid.uuid4().hex[:8]}"), data))
