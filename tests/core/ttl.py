"""Reading a key's TTL on either host of the engine script."""

from __future__ import annotations

from mageflow import Mageflow
from mageflow.store import MemoryStore, RedisStore


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


async def keys_of(app: Mageflow, wf: str) -> list[str]:
    """Every key of workflow ``wf`` (its hash and auxiliary keys), as Redis' SCAN finds them."""
    store = app.store
    h = store.hash_key(wf)
    if isinstance(store, RedisStore):
        return [k async for k in store.client.scan_iter(match=f"{h}*", count=1000)]
    assert isinstance(store, MemoryStore)
    ks = store.keyspace
    return [k for k in list(ks.data) if k.startswith(h) and ks.exists(k)]
