"""Helpers of the core tests that run on both hosts of the engine script."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest

from mageflow import Mageflow
from mageflow.engine import split_key
from mageflow.errors import NonRetryableError
from mageflow.store import MemoryStore, RedisStore
from mageflow.store.base import StateStore
from mageflow.testing.manual import ManualBackend, Sent


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


async def deliver_all(mf: Mageflow, sent: list[Sent]) -> None:
    """Deliver ``sent`` in order; a task failing for good is part of the test."""
    for m in sent:
        with contextlib.suppress(NonRetryableError):
            await manual(mf).deliver(m)


async def drain(mf: Mageflow) -> list[Sent]:
    """Deliver everything published, and what that publishes, until nothing is left."""
    delivered: list[Sent] = []
    while sent := manual(mf).take():
        delivered.extend(sent)
        await deliver_all(mf, sent)
    return delivered


async def commands_run(client: Any) -> dict[str, int]:
    """Commands a Redis ran since its last ``CONFIG RESETSTAT``, by name (those of scripts
    included), without the ones a test reads the figures with."""
    stats = await client.info("commandstats")
    skip = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config"}
    return {k: int(v["calls"]) for k, v in stats.items() if k not in skip}


def without_stats_expire(figures: dict[str, int]) -> dict[str, int]:
    """Command counts with EXPIRE lowered by the one a statistics bucket may take: the
    engine expires this minute's bucket in a call that creates one of its fields, so
    which of two otherwise identical runs pays it depends on what ran before."""
    out = dict(figures)
    if out.get("cmdstat_expire"):
        out["cmdstat_expire"] -= 1
    return out


def same_commands(a: dict[str, int], b: dict[str, int]) -> bool:
    """The same commands, each as often, but for a statistics bucket's one EXPIRE."""
    return a == b or without_stats_expire(a) == b or a == without_stats_expire(b)


async def workflow_records(mf: Mageflow, key: str) -> dict[str, str]:
    """Every field of the workflow hash of node ``key``."""
    (records,) = await mf.store.read_many([split_key(key)[0]])
    return records
