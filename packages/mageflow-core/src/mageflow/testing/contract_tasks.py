"""The tasks the contract suite runs. A backend's worker app calls :func:`register` on its
``Mageflow`` instance so that worker processes serve them."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from mageflow import faults
from mageflow.app import Mageflow
from mageflow.backend.base import JSON, RunContext, serving_queues
from mageflow.errors import NonRetryableError
from mageflow.flows.handles import Signature
from mageflow.flows.tasks import current_task
from mageflow.models.config import SwarmConfig
from mageflow.models.retry import Backoff
from mageflow.models.return_value import ReturnValue
from mageflow.testing.probe import get_probe
from mageflow.testing.workers import announce_worker

RETRIES = 2
"""Extra attempts configured on ``contract.fail``, ``contract.flaky`` and
``contract.backoff``."""

BACKOFF = Backoff(initial=0.2, factor=2.0, max=0.3, jitter=0.1)
"""The backoff of ``contract.backoff``: small, growing, capped from the second retry on."""


class AddInput(BaseModel):
    ns: str
    x: int
    y: int


class DoubleInput(BaseModel):
    ns: str
    value: ReturnValue[int]


class NewTaskMessage(BaseModel):
    """The product documents' swarm item model: extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    ns: str
    task_id: int


ROUTED_QUEUES = ("contract-a", "contract-b")
"""Queues a harness serves each by a worker process of its own (besides ``default``):
the routing test sends ``contract.where`` to each; ``contract.gpu`` is registered with
the second as its queue."""
UNSERVED_QUEUE = "contract-nobody"
"""A queue no worker serves: a task routed there stays queued."""
OVERDUE_TIMEOUT = 0.3
"""The ``timeout=`` of ``contract.overdue`` (seconds), which always outlives it."""

URGENT_PRIORITY = 8
"""The registered default priority of ``contract.urgent``."""


class Unserialisable:
    pass


DELIVERY = "delivery"
"""Probe event of every delivery of a :data:`TAPPED` task, as the adapter reported it:
``{"task", "attempt", "final", "run_id"}`` (recorded before the core sees it)."""

TAPPED = frozenset(
    {"contract.counted", "contract.give_up", "contract.mortal", "contract.overtime",
     "contract.hold", "contract.overdue"}
)  # fmt: skip
"""The tasks whose deliveries the probe records (:data:`DELIVERY`)."""


async def record_delivery(payload: JSON, ctx: RunContext) -> None:
    """The delivery tap :func:`register` installs: what the adapter reported, per ``ns``
    (tapped tasks are run with ``ns`` in their run message)."""
    if ctx.task_name not in TAPPED or not isinstance(payload, dict):
        return
    own = payload.get("own")
    ns = own.get("ns") if isinstance(own, dict) else None
    if isinstance(ns, str):
        seen = {"attempt": ctx.attempt, "final": ctx.is_final_attempt, "run_id": ctx.run_id}
        await get_probe().record(ns, DELIVERY, {"task": ctx.task_name, **seen})


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "ns"}


def register(mf: Mageflow) -> None:
    """Register every ``contract.*`` task on ``mf``, tap its deliveries, and announce its
    worker processes to a :class:`~mageflow.testing.workers.WorkerPool`."""
    mf.tap_deliveries(record_delivery)
    mf.backend.on_worker_start(announce_worker)

    @mf.task("contract.echo")
    async def echo(message: dict[str, Any]) -> dict[str, Any]:
        await get_probe().record(message["ns"], "echo", _public(message))
        return _public(message)

    @mf.task("contract.where")
    async def where(message: dict[str, Any]) -> list[str]:
        served = list(serving_queues())
        await get_probe().record(message["ns"], "where", {"tag": message["tag"], "served": served})
        return served

    @mf.task("contract.gpu", queue=ROUTED_QUEUES[1])
    async def gpu(message: dict[str, Any]) -> list[str]:
        return list(serving_queues())

    @mf.task("contract.whoami")
    async def whoami(message: dict[str, Any]) -> dict[str, Any]:
        return {"me": current_task().model_dump(), "message": _public(message)}

    @mf.task("contract.whoami_sync")
    def whoami_sync(message: dict[str, Any]) -> dict[str, Any]:  # runs in a thread
        return {"me": current_task().model_dump(), "message": _public(message)}

    @mf.task("contract.add", input_validator=AddInput)
    async def add(message: AddInput) -> int:
        await get_probe().record(message.ns, "add", [message.x, message.y])
        return message.x + message.y

    @mf.task("contract.double", input_validator=DoubleInput)
    async def double(message: DoubleInput) -> int:
        # the pid first: a worker killed between the two records leaves a pid, never a
        # run without one (exactly_once counts runs per process)
        await get_probe().record(message.ns, "double-pid", os.getpid())
        await get_probe().record(message.ns, "double", message.value)
        return message.value * 2

    @mf.task("contract.total")
    async def total(message: dict[str, Any]) -> int:
        values = message["mageflow_results"]
        await get_probe().record(message["ns"], "total", values)
        return sum(v for v in values if isinstance(v, int))

    @mf.task("contract.collect")
    async def collect(message: dict[str, Any]) -> str:
        await get_probe().record(message["ns"], message.get("tag", "collect"), _public(message))
        return "collected"

    @mf.task("contract.fail", retries=RETRIES)
    async def fail(message: dict[str, Any]) -> None:
        await get_probe().record(message["ns"], "fail-attempt", _public(message))
        raise ValueError(message.get("reason", "it failed"))

    @mf.task("contract.flaky", retries=RETRIES)
    async def flaky(message: dict[str, Any]) -> str:
        probe = get_probe()
        await probe.record(message["ns"], "flaky-attempt", message.get("id"))
        attempts = await probe.events(message["ns"], "flaky-attempt")
        if len(attempts) <= message.get("fail_times", 1):
            raise RuntimeError("flaky failure")
        return "recovered"

    @mf.task("contract.backoff", retries=RETRIES, backoff=BACKOFF)
    async def backoff(message: dict[str, Any]) -> str:
        probe = get_probe()
        await probe.record(message["ns"], "backoff-attempt", time.time())
        attempts = await probe.events(message["ns"], "backoff-attempt")
        if len(attempts) <= message.get("fail_times", RETRIES):
            raise RuntimeError("not yet")
        return "recovered"

    @mf.task("contract.gated")
    async def gated(message: dict[str, Any]) -> Any:
        """Fails until the test sets the probe flag ``gate`` (``"open"`` by default)."""
        probe = get_probe()
        ns = message["ns"]
        await probe.record(ns, "gated", message.get("id"))
        if not await probe.flag(ns, message.get("gate", "open")):
            raise ValueError(f"gate closed for {message.get('id')}")
        return message.get("id")

    @mf.task("contract.slow")
    async def slow(message: dict[str, Any]) -> Any:
        probe = get_probe()
        ns = message["ns"]
        await probe.enter(ns)
        try:
            await probe.record(ns, "slow-start", message.get("id"))
            await asyncio.sleep(message.get("seconds", 0.05))
        finally:
            await probe.leave(ns)
        if message.get("fail"):
            raise ValueError(f"item {message.get('id')} failed")
        await probe.record(ns, "slow-done", message.get("id"))
        return message.get("id")

    @mf.task("contract.block")
    async def block(message: dict[str, Any]) -> str:
        probe = get_probe()
        ns = message["ns"]
        await probe.record(ns, "block-start", message.get("id"))
        while not await probe.flag(ns, "release"):  # noqa: ASYNC110 - flag set by another process
            await asyncio.sleep(0.02)
        await probe.record(ns, "block-done", message.get("id"))
        return "released"

    @mf.task("contract.sleepy", retries=1, timeout=0.3)
    async def sleepy(message: dict[str, Any]) -> str:
        await get_probe().record(message["ns"], "sleepy-attempt", message.get("id"))
        await asyncio.sleep(message.get("seconds", 3))
        return "woke up"

    @mf.task("contract.new_task")  # no input_validator=: inferred from the annotation
    async def new_task(message: NewTaskMessage) -> dict[str, Any]:
        await get_probe().record(message.ns, "new_task", message.task_id)
        return {"model": type(message).__name__, "task_id": message.task_id}

    @mf.task("contract.clock")
    async def clock(message: dict[str, Any]) -> float:
        """Records and returns when it ran (seconds since the epoch)."""
        now = time.time()
        await get_probe().record(message["ns"], "clock", {"id": message.get("id"), "at": now})
        return now

    @mf.task("contract.urgent", priority=URGENT_PRIORITY)
    async def urgent(message: dict[str, Any]) -> Any:
        await get_probe().record(message["ns"], "echo", _public(message))
        return message.get("id")

    @mf.task("contract.route")
    async def route(message: dict[str, Any]) -> Any:
        """A branch selector: returns the message's ``route``."""
        await get_probe().record(message["ns"], "route", message.get("route"))
        return message.get("route")

    @mf.task("contract.bad_result")
    async def bad_result(message: dict[str, Any]) -> Any:
        return {"value": Unserialisable()}

    @mf.task("contract.fanout")
    async def fanout(message: dict[str, Any]) -> Signature:
        """Returns, to run in its place, a capped swarm of ``n`` ``contract.slow`` items
        computed from its input."""
        ns = message["ns"]
        await get_probe().record(ns, "fanout", message["n"])
        items = [{"ns": ns, "id": i, "seconds": 0.02} for i in range(message["n"])]
        config = SwarmConfig(max_concurrency=message["cap"])
        return await mf.swarm_of("contract.slow", items, config=config, is_swarm_closed=True)

    @mf.task("contract.counted", retries=RETRIES)
    async def counted(message: dict[str, Any]) -> int:
        """Fails until it has been delivered ``fail_times`` + 1 times (default: every
        retry is used); returns how many deliveries the probe saw."""
        seen = len(await get_probe().events(message["ns"], DELIVERY))
        if seen <= message.get("fail_times", RETRIES):
            raise RuntimeError(f"delivery {seen} fails")
        return seen

    @mf.task("contract.give_up", retries=RETRIES)
    async def give_up(message: dict[str, Any]) -> None:
        await get_probe().record(message["ns"], "give-up", None)
        raise NonRetryableError("retrying cannot help: give up at once")

    @mf.task("contract.mortal", retries=1)
    async def mortal(message: dict[str, Any]) -> str:
        """Run 1 fails (retried); run 2, the final attempt, kills its worker mid-task when
        :data:`faults.IN_TASK` is armed; the redelivery of that attempt succeeds."""
        probe = get_probe()
        await probe.record(message["ns"], "mortal", None)
        runs = len(await probe.events(message["ns"], "mortal"))
        if runs == 1:
            raise RuntimeError("the first attempt fails")
        if runs == 2:
            faults.check(faults.IN_TASK, "contract.mortal")
        return "survived"

    @mf.task("contract.overtime")
    async def overtime(message: dict[str, Any]) -> str:
        probe = get_probe()
        await probe.record(message["ns"], "overtime-start", None)
        await asyncio.sleep(message["seconds"])
        await probe.record(message["ns"], "overtime-done", None)
        return "on time"

    @mf.task("contract.hold", retries=RETRIES)
    async def hold(message: dict[str, Any]) -> str:
        """``contract.block`` with retries: runs until the probe flag ``release``."""
        probe = get_probe()
        ns = message["ns"]
        await probe.record(ns, "hold-start", None)
        while not await probe.flag(ns, "release"):  # noqa: ASYNC110 - flag set by another process
            await asyncio.sleep(0.02)
        await probe.record(ns, "hold-done", None)
        return "released"

    @mf.task("contract.overdue", timeout=OVERDUE_TIMEOUT)
    async def overdue(message: dict[str, Any]) -> str:
        await get_probe().record(message["ns"], "overdue", None)
        await asyncio.sleep(message.get("seconds", 2.0))
        return "too late"
