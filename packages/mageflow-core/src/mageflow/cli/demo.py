"""``mageflow demo``: a tour of the API on the embedded default (no servers)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from mageflow.app import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.errors import TaskFailedError
from mageflow.flows.graph import GraphNode
from mageflow.models.config import SwarmConfig
from mageflow.models.return_value import ReturnValue


class Order(BaseModel):
    order_id: str
    amount: int


class Charged(BaseModel):
    charge: ReturnValue[int]


async def graph_demo(mf: Mageflow, console: Console) -> None:
    """validate -> (bill, flaky-upload) -> receipt, the upload optional; then a branch."""

    @mf.task("bill")
    async def bill(msg: dict[str, Any]) -> int:
        amount: int = msg["mageflow_results"]["validate"]  # dependency results by name
        return amount + 5

    @mf.task("receipt")
    async def receipt(msg: dict[str, Any]) -> str:
        deps = msg["mageflow_results"]
        upload = "failed" if "mageflow_error" in deps["upload"] else "ok"
        return f"receipt for {deps['bill']} (upload {upload})"

    @mf.task("size")
    async def size(msg: dict[str, Any]) -> str:
        return "big" if msg["amount"] > 100 else "small"

    g = await mf.graph(
        {
            "validate": "validate",
            "bill": ("bill", ["validate"]),
            "upload": GraphNode(await mf.sign("flaky-upload", file="receipt.pdf"), ["validate"]),
            "receipt": GraphNode("receipt", requires=["bill"], optional=["upload"]),
        }
    )
    result = await g.aio_run({"order_id": "C-3", "amount": 20}, timeout=10)
    console.print(f"graph {g.key} -> {result}")
    br = await mf.branch("size", {"big": "receipt"}, default="validate")
    picked = await br.aio_run({"order_id": "D-4", "amount": 30}, timeout=10)
    cases = await br.cases()
    console.print(
        f"branch {br.key} -> {picked} (case 'big' {(await cases['big'].get_status()).value})"
    )


async def run_demo(console: Console, redis_url: str | None = None) -> None:
    logging.getLogger("mageflow").setLevel(logging.ERROR)
    mf = Mageflow(
        backend=LocalBackend(workers=2, concurrency=4), redis_url=redis_url or "memory://"
    )
    running = 0
    peak = 0

    @mf.task("validate", input_validator=Order)
    async def validate(order: Order) -> int:
        console.print(f"  validate order {order.order_id}: amount {order.amount}")
        return order.amount

    @mf.task("charge", input_validator=Charged)
    async def charge(msg: Charged) -> int:
        console.print(f"  charge {msg.charge} (+5 fee)")
        return msg.charge + 5

    @mf.task("thumbnail")
    async def thumbnail(msg: dict[str, Any]) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return f"thumb-{msg['image']}"

    @mf.task("flaky-upload", retries=2)
    async def flaky_upload(msg: dict[str, Any]) -> None:
        console.print(f"  upload {msg['file']}: attempt failed")
        raise ConnectionError("storage unavailable")

    @mf.task("notify")
    async def notify(msg: dict[str, Any]) -> None:
        if "mageflow_error" in msg:
            err = msg["mageflow_error"]
            console.print(f"  [red]error callback[/]: {err['type']}: {err['message']} ({msg})")
        else:
            console.print(f"  [green]success callback[/]: {msg['mageflow_results']!r}")

    console.rule("1. chain: validate -> charge, success callback")
    wf = await mf.chain(["validate", "charge"], name="checkout", success="notify")
    result = await wf.aio_run({"order_id": "A-1", "amount": 40}, timeout=10)
    await asyncio.sleep(0.05)
    console.print(f"chain {wf.key} -> {result}  status={(await wf.get_status()).value}")

    console.rule("2. swarm: 12 thumbnails, at most 3 at once")
    items = [await mf.sign("thumbnail", image=i) for i in range(12)]
    sw = await mf.swarm(
        items,
        config=SwarmConfig(max_concurrency=3),
        success_callbacks=["notify"],
        is_swarm_closed=True,
    )
    result = await sw.aio_run({}, timeout=10)
    await asyncio.sleep(0.05)
    console.print(f"swarm {sw.key} -> {len(result)} results, peak concurrency {peak} (cap 3)")

    console.rule("3. a failing task: 3 attempts, then its error callback, once")
    sig = await mf.sign("flaky-upload", error_callbacks=["notify"])
    try:
        await sig.aio_run({"file": "report.pdf"}, timeout=10)
    except TaskFailedError as exc:
        console.print(f"aio_run raised {type(exc).__name__}: {exc}")
    await asyncio.sleep(0.1)

    console.rule("4. nesting: chain(validate, swarm of charges) and its result list")
    inner = await mf.swarm([await mf.sign("charge") for _ in range(3)], is_swarm_closed=True)
    nested = await mf.chain(["validate", inner], success="notify")
    result = await nested.aio_run({"order_id": "B-7", "amount": 10}, timeout=10)
    console.print(f"nested {nested.key} -> {result}")
    await asyncio.sleep(0.1)

    console.rule("5. graph: a diamond whose optional edge fails, then a branch on a result")
    await graph_demo(mf, console)
    await mf.aclose()
    console.rule("done")
