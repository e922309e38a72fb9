"""The harness an adapter provides, and helpers shared by the contract tests."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mageflow.app import Mageflow
from mageflow.flows.handles import Signature
from mageflow.models.status import SignatureStatus
from mageflow.testing.probe import Probe


@dataclass
class ContractHarness:
    """What an adapter hands the suite."""

    app: Mageflow
    probe: Probe
    fault_dir: Path | None = None
    """Directory the workers read fault files from (``MAGEFLOW_FAULT_DIR``); ``None``
    skips the crash-window test."""
    redelivers_after_crash: bool = True
    """The task manager redelivers a message whose worker died before acknowledging it.
    Informational: the crash-window test passes either way (through the redelivery, or
    through the reconciler)."""
    redelivery_lease: float | None = None
    """Seconds after which the task manager hands a message its worker still holds to
    another worker unless the worker renews its claim (taskiq's stream ``idle_timeout``, a
    Hatchet worker's heartbeat timeout, a visibility timeout). The suite runs a task for
    longer and checks it ran once. ``None`` (the task manager never takes back a message
    from a live worker) skips that test."""
    timeout: float = 30.0
    """Upper bound for one workflow to finish."""
    settle: float = 0.5
    """How long to wait before asserting that something did *not* happen."""
    worker_slots: int = 3
    """Tasks the workers can run at once in total (the concurrency test needs >= 3)."""
    routed_queues: tuple[str, ...] = ()
    """Queues served each by a worker of its own besides ``default`` (the routing test
    needs :data:`mageflow.testing.contract_tasks.ROUTED_QUEUES`)."""

    @property
    def stream_delivery(self) -> bool:
        """The engine appends dispatched tasks' messages itself (the backend's
        :meth:`~mageflow.backend.base.TaskBackend.stream_delivery` on the store's Redis):
        workers publish nothing a transition dispatched."""
        return bool(self.app.engine.delivery)


def _ns() -> str:
    return uuid.uuid4().hex[:12]


class ContractBase:
    """Helpers the test classes share."""

    @staticmethod
    async def events(h: ContractHarness, ns: str, event: str, n: int) -> list[Any]:
        """Wait until ``event`` happened ``n`` times, then let ``settle`` pass and check it
        did not happen more often."""

        async def enough() -> bool:
            return len(await h.probe.events(ns, event)) >= n

        await h.probe.wait_until(enough, h.timeout, f"{n} x {event!r}")
        await asyncio.sleep(h.settle)
        found = await h.probe.events(ns, event)
        assert len(found) == n, f"{event!r} happened {len(found)} times, expected {n}: {found}"
        return found

    @staticmethod
    def require(h: ContractHarness, capability: str, meaning: str) -> None:
        if not getattr(h.app.backend.capabilities, capability):
            pytest.skip(f"backend {h.app.backend.name!r} lacks {capability}: {meaning}")

    async def _started(self, h: ContractHarness, ns: str, n: int = 1) -> None:
        async def started() -> bool:
            return len(await h.probe.events(ns, "block-start")) >= n

        await h.probe.wait_until(started, h.timeout, "the blocking task to start")


async def until_active(harness: ContractHarness, sig: Signature) -> None:
    """Wait until running ``sig`` shows as active: at once, or, for a first delivery run
    before its start was recorded (stream delivery), once it has run
    ``mageflow.flows.lease.FIRST_START_AFTER`` seconds."""

    async def active() -> bool:
        return await sig.get_status() is SignatureStatus.ACTIVE

    await harness.probe.wait_until(active, harness.timeout, f"{sig.key} to show as active")
