from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mageflow.testing.redis_cluster import RedisCluster, redis_cluster
from mageflow.testing.redis_server import RedisServer, check_strategy, redis_server

# Every app and worker the tests start (workers inherit the environment) re-sends a
# dispatched task that has not started after 1 s, so the reconciler is exercised by the
# whole suite, and the loss-window tests finish quickly.
os.environ.setdefault("MAGEFLOW_RESEND_AFTER", "1")


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A real Redis server for the whole session (one per xdist worker)."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture(scope="session")
def redis7_srv() -> Iterator[RedisServer]:
    """A Redis 7+ server (``redis-server`` on PATH), where RedisStore runs the engine as
    a Redis function. CI installs one (``.ci/run``) and sets ``MAGEFLOW_REQUIRE_REDIS7``:
    there a missing one fails the test instead of skipping it."""
    why = "no Redis 7+ redis-server on PATH (apt-get install redis-server)"
    if check_strategy("path")[0]:
        with redis_server("path") as server:
            if int(server.version.split(".")[0]) >= 7:
                yield server
                return
            why = f"redis-server on PATH is {server.version}, not 7+"
    if os.environ.get("MAGEFLOW_REQUIRE_REDIS7"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def redis7_url(redis7_srv: RedisServer) -> str:
    return redis7_srv.url


@pytest.fixture(scope="session")
def redis_cluster_srv() -> Iterator[RedisCluster]:
    """A real three-master Redis Cluster for the whole session (one per xdist worker,
    started on the first test that asks for it: about 2 s)."""
    with redis_cluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster_srv: RedisCluster) -> str:
    return redis_cluster_srv.url
