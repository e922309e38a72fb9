from __future__ import annotations

from collections.abc import Iterator

import pytest

from mageflow.testing.redis_server import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A real Redis server for the whole session (one per xdist worker)."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url
