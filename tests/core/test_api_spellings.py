"""The spellings of the product documents and a typed user API."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel

import mageflow
from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.errors import SignatureInUseError
from mageflow.store import MemoryStore


class Order(BaseModel):
    order_id: str


@pytest_asyncio.fixture(loop_scope="function")
async def app() -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend=LocalBackend(), store=MemoryStore())

    @mf.task("inferred")
    async def inferred(order: Order) -> str:
        return type(order).__name__ + ":" + order.order_id

    @mf.task("plain")
    async def plain(msg: dict[str, Any]) -> Any:
        return msg

    yield mf
    await mf.aclose()


def test_the_input_model_is_inferred_only_from_a_pydantic_annotation(app: Mageflow) -> None:
    assert app.tasks["inferred"].input_model is Order
    assert app.tasks["plain"].input_model is None


@pytest.mark.asyncio
async def test_sign_by_keyword_task_name_and_its_misuse(app: Mageflow) -> None:
    sig = await app.sign(task_name="inferred")
    assert await sig.aio_run({"order_id": "7", "extra": 1}, timeout=5) == "Order:7"
    with pytest.raises(TypeError, match="needs a task"):
        await app.sign()
    with pytest.raises(TypeError, match="two tasks"):
        await app.sign("plain", task_name="inferred")
    with pytest.raises(SignatureInUseError, match="sign its task again"):
        await app.sign(sig, extra=1)
    assert await app.sign(sig) is sig


def test_module_level_functions_spell_out_their_keywords() -> None:
    for fn, keywords in [
        (mageflow.sign, {"task_name", "task_identifiers", "success_callbacks", "mageflow_options"}),
        (mageflow.chain, {"name", "success", "error", "mageflow_options"}),
        (mageflow.swarm, {"success_callbacks", "config", "is_swarm_closed", "task_name"}),
    ]:
        params = inspect.signature(fn).parameters
        assert keywords <= set(params), fn
        assert (
            params.get("is_swarm_closed", None) is None
            or params["is_swarm_closed"].default is False
        )
