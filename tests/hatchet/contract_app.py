"""The contract suite's tasks on the ``hatchet`` backend, served by real worker processes.

Both ways of starting a worker are used by the tests::

    mageflow worker tests.hatchet.contract_app:mf --concurrency 3
    python tests/hatchet/contract_app.py          # calls mf.run_worker() under a guard

Everything comes from the environment the test gives the worker: the Hatchet server
(``HATCHET_CLIENT_*``), the store (``MAGEFLOW_REDIS_URL``, ``MAGEFLOW_KEY_PREFIX``), the
probe the contract tasks write to (``MAGEFLOW_PROBE_URL``), the fault directory
(``MAGEFLOW_FAULT_DIR``), the worker's name and slots (``CONTRACT_WORKER_NAME``,
``CONTRACT_WORKER_SLOTS``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from mageflow import Mageflow
from mageflow.testing import contract_tasks
from mageflow.testing.probe import get_probe

mf = Mageflow(backend="hatchet", worker_name=os.environ.get("CONTRACT_WORKER_NAME", "contract"))
contract_tasks.register(mf)


# -- tasks of the adapter's own tests (tests/hatchet/test_hatchet_backend.py) ---------------
class StrictInput(BaseModel):
    ns: str
    count: int


@mf.task("hatchet.strict", input_validator=StrictInput, retries=3)
async def strict(message: StrictInput) -> int:
    """Invalid input is not retried although ``retries=3``."""
    await get_probe().record(message.ns, "strict", message.count)
    return message.count


@mf.task("hatchet.busy")
async def busy(message: dict[str, Any]) -> str:
    """Awaits Redis back to back: a cancellation nearly always lands in a Redis call,
    where ``asyncio.wait_for`` on Python < 3.12 can swallow it."""
    probe = get_probe()
    await probe.record(message["ns"], "busy-start", None)
    try:
        while not await probe.flag(message["ns"], "release"):
            pass
    except asyncio.CancelledError:
        await asyncio.shield(probe.record(message["ns"], "busy-cancelled", None))
        raise
    await probe.record(message["ns"], "busy-done", None)
    return "released"


if __name__ == "__main__":  # the Hatchet worker's listener process re-imports this module
    mf.run_worker(concurrency=int(os.environ.get("CONTRACT_WORKER_SLOTS", "3")))
