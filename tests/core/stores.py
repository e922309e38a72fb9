"""Helpers of the core tests that run on both hosts of the engine script."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mageflow import Mageflow
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore
from mageflow.testing.manual import ManualBackend


def store_for(request: pytest.FixtureRequest, prefix: str, **ttls: Any) -> StateStore:
    """The store ``request.param`` names (``"redis"``: the session's server under a fresh
    prefix, else in memory), with ``ttls`` (``active_ttl=``, ``finished_ttl=``)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return RedisStore(url, prefix=f"{prefix}-{uuid.uuid4().hex[:6]}", **ttls)
    return MemoryStore(**ttls)


def manual(mf: Mageflow) -> ManualBackend:
    assert isinstance(mf.backend, ManualBackend)
    return mf.backend


async def ttl_of(app: Mageflow, key: str) -> int:
    """Seconds left on ``key`` (-1: no TTL, -2: no such key), as Redis reports it."""
    store = app.store
    if isinstance(store, RedisStore):
        return int(await store.client.ttl(key))
    assert isinstance(store, MemoryStore)
    ks = store.keyspace
    if not ks.exists(key):
        return -2
    at = ks.expires.get(key)
    return -1 if at is None else round(at - ks.clock())
