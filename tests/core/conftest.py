"""Fixtures shared by the engine tests in this folder."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow
from mageflow.store import MemoryStore, RedisStore
from mageflow.testing.manual import ManualBackend


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def manual_app(request: pytest.FixtureRequest) -> AsyncIterator[Mageflow]:
    """An app on ManualBackend (the test delivers every message), on MemoryStore and on a
    real Redis, whose reconciler runs only when the test sweeps, re-sending at once."""
    if request.param == "redis":
        store: Any = RedisStore(
            request.getfixturevalue("redis_url"), prefix=f"man-{uuid.uuid4().hex[:6]}"
        )
    else:
        store = MemoryStore()
    mf = Mageflow(backend=ManualBackend(), store=store, resend_after=0.0)
    mf.start_reconciler = lambda: None  # type: ignore[method-assign]
    yield mf
    await mf.aclose()
