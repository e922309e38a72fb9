"""RedisStore on a real Redis Cluster (three masters on loopback, built by the
``redis_cluster`` fixture). The contract suite runs on it too
(``tests/backends/test_local_contract.py``); these tests check what is particular to a
cluster: where the keys land, what is refused, the fixture itself."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import ConfigurationError, StoreUnavailableError
from mageflow.store import RedisStore
from mageflow.store.base import CHUNK, Script
from mageflow.testing.manual import ManualBackend
from mageflow.testing.redis_cluster import SLOTS, RedisCluster, redis_cluster, watch_script_keys
from tests.core.test_cli_ops import Cli

pytestmark = pytest.mark.cluster
on_session_loop = pytest.mark.asyncio(loop_scope="session")
"""The async tests share the session's loop with the store they use."""


@pytest_asyncio.fixture(loop_scope="session")
async def store(redis_cluster_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_cluster_url, prefix=f"cl-{uuid.uuid4().hex[:6]}")
    yield s
    await s.close()


@pytest_asyncio.fixture(loop_scope="session")
async def app(store: RedisStore) -> AsyncIterator[Mageflow]:
    mf = Mageflow(backend="local", store=store)

    @mf.task(name="add")
    async def add(msg: dict[str, Any]) -> int:
        return int(msg.get("x", 0)) + 1

    yield mf
    await mf.aclose()


def node_keys(cluster: RedisCluster, prefix: str) -> dict[str, list[str]]:
    """The keys under ``prefix`` that each master holds (read on the node itself)."""
    out: dict[str, list[str]] = {}
    for url in cluster.nodes:
        with redis.Redis.from_url(url, decode_responses=True) as node:
            out[url] = list(node.scan_iter(match=f"{prefix}:*", count=1000))
    return out


@on_session_loop
async def test_the_fixture_builds_a_cluster_of_three_masters_covering_every_slot(
    redis_cluster_srv: RedisCluster,
) -> None:
    assert len(redis_cluster_srv.nodes) == 3
    covered = 0
    for url in redis_cluster_srv.nodes:
        with redis.Redis.from_url(url, decode_responses=True) as node:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert info["cluster_known_nodes"] == "3"
            mine = next(n for n in node.cluster("nodes").values() if "myself" in n["flags"])
            assert "master" in mine["flags"]
            covered += sum(b - a + 1 for a, b in my_slots(node))
    assert covered == SLOTS


def test_the_fixture_stops_its_nodes_and_removes_their_directory() -> None:
    with redis_cluster(2) as cluster:
        with redis.Redis.from_url(cluster.nodes[0], decode_responses=True) as node:
            pid = node.info("server")["process_id"]
            workdir = Path(node.config_get("dir")["dir"]).parent
        assert workdir.is_dir()
    assert not workdir.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(cluster.nodes[0], socket_connect_timeout=1).ping()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@on_session_loop
async def test_workflows_spread_over_the_masters(
    app: Mageflow, store: RedisStore, redis_cluster_srv: RedisCluster
) -> None:
    """Each workflow's keys live on the master of its slot: 30 workflows land on all
    three (a master left out would happen by chance once in 70,000 runs)."""
    handles = [await app.chain(["add", "add"]) for _ in range(30)]
    await asyncio.gather(*(h.aio_run({"x": 1}) for h in handles))
    held = node_keys(redis_cluster_srv, store.prefix)
    homes = {}
    for h in handles:
        wf, _ = split_key(h.key)
        homes[wf] = [url for url, keys in held.items() if store.hash_key(wf) in keys]
    assert all(len(urls) == 1 for urls in homes.values()), homes
    assert {urls[0] for urls in homes.values()} == set(redis_cluster_srv.nodes)


@on_session_loop
async def test_every_key_of_a_workflow_carries_its_hash_tag(
    app: Mageflow, store: RedisStore, redis_cluster_srv: RedisCluster
) -> None:
    """Chains, swarms, graphs, callbacks and a suspended swarm write only keys in their
    workflow's slot; the only keys without a workflow's hash tag are the cross-workflow
    indexes the client writes with commands of their own (never inside a script)."""
    sw = await app.swarm(
        [await app.sign("add", x=i) for i in range(6)],
        config=SwarmConfig(max_concurrency=2),
        success_callbacks=["add"],
        is_swarm_closed=True,
    )
    await sw.aio_run({})
    g = await app.graph({"a": "add", "b": ("add", ["a"]), "c": ("add", ["a", "b"])})
    await g.aio_run({"x": 1})
    held = await app.swarm([await app.sign("add", x=1)], is_swarm_closed=False)
    await held.aio_run_no_wait({})
    await held.suspend()
    await app.sign("add", task_identifiers={"order": "7"})
    keys = [k for ks in node_keys(redis_cluster_srv, store.prefix).values() for k in ks]
    tagged = [k for k in keys if k.startswith(f"{store.prefix}:{{")]
    assert any(":items:" in k for k in tagged) and any(":events" in k for k in tagged)
    others = sorted(k for k in keys if k not in tagged)
    globals_ = {store.index_key, store.live_key, store.workers_key}
    assert all(k in globals_ or k.startswith(f"{store.prefix}:ident:") for k in others), others


@on_session_loop
async def test_the_cli_reads_workflows_across_the_masters(
    app: Mageflow, store: RedisStore, redis_cluster_url: str
) -> None:
    """``mageflow ls`` reads workflows of every master; ``mageflow stats`` says, in one
    line and exit code 2, that a cluster keeps no statistics."""
    handles = [await app.chain(["add"], name=f"on-cluster-{i}") for i in range(6)]
    await asyncio.gather(*(h.aio_run({"x": 1}) for h in handles))
    cli = Cli(redis_cluster_url, store.prefix)
    code, out, err = await cli("ls", "--json")
    assert code == 0, err
    assert {row["key"] for row in json.loads(out)} >= {h.key for h in handles}
    code, out, err = await cli("stats")
    assert code == 2 and "Redis Cluster" in out + err and "Traceback" not in out + err


@on_session_loop
async def test_the_store_has_no_statistics_and_says_why(app: Mageflow, store: RedisStore) -> None:
    assert store.cluster and store.stats_key is None
    await (await app.chain(["add"])).aio_run({})
    with pytest.raises(ConfigurationError, match="Redis Cluster"):
        await app.stats()


@on_session_loop
async def test_a_wait_is_woken_by_a_publish_on_another_node(
    store: RedisStore, redis_cluster_srv: RedisCluster
) -> None:
    """The engine PUBLISHes on the node of the workflow; the waiter may listen on any: a
    cluster sends a PUBLISH to every node. Woken well before the 5 s safety re-check."""
    wf = uuid.uuid4().hex
    channel = f"{store.hash_key(wf)}:{F.DONE_CHANNEL}"
    published = asyncio.Event()

    async def settled() -> bool:
        return published.is_set()

    async def publish_elsewhere() -> None:
        await asyncio.sleep(0.2)
        published.set()
        for url in redis_cluster_srv.nodes:  # from every node: one is not the waiter's
            client = aioredis.Redis.from_url(url)
            await client.publish(channel, "r")
            await client.aclose()

    task = asyncio.create_task(publish_elsewhere())
    await store.wait_published(wf, F.DONE_CHANNEL, "r", settled, timeout=3)
    await task


@on_session_loop
async def test_a_large_build_goes_to_the_node_of_its_slot(app: Mageflow) -> None:
    """A build with more fields than one command carries is sent packed, in order, to
    the master of the workflow's slot."""
    n = CHUNK // 2 + 10  # four fields per item: more than one HSET's worth
    sw = await app.swarm_of("add", ({"x": i} for i in range(n)))
    wf, sid = split_key(sw.key)
    items = await app.store.read_list(wf, F.aux(F.ITEMS, sid))
    assert len(items) == n
    kwargs = await app.store.read(wf, [F.of(s, F.KWARGS) for s in items[-3:]])
    assert [json.loads(k or "{}")["x"] for k in kwargs] == [n - 3, n - 2, n - 1]


@on_session_loop
async def test_the_watch_reports_a_script_that_strays_to_another_slot_of_its_node(
    store: RedisStore, redis_cluster_srv: RedisCluster
) -> None:
    """Redis 6 lets a script touch an undeclared key of another slot as long as the same
    node serves it; ``watch_script_keys`` (used by the contract suite on the cluster)
    reports it, and stays quiet for a script that keeps to its slot."""
    await store.ping()
    client: Any = store.client
    home = f"{store.prefix}:{{a}}"
    node = client.get_node_from_key(home).name
    stray = next(
        k
        for k in (f"{store.prefix}:other{i}" for i in range(10_000))
        if client.get_node_from_key(k).name == node and client.keyslot(k) != client.keyslot(home)
    )
    strays_to = Script("redis.call('SET', KEYS[1], 1); return redis.call('GET', ARGV[1])")
    keeps_to = Script("redis.call('SET', KEYS[1], 1); return redis.call('GET', KEYS[1] .. ':x')")
    with watch_script_keys(redis_cluster_srv) as strays:
        await store.run_script(keeps_to, [home], [])
    assert strays == []
    with watch_script_keys(redis_cluster_srv) as strays:
        assert await store.run_script(strays_to, [home], [stray]) is None  # Redis allowed it
    assert strays == [f"GET {stray} (script slot {client.keyslot(home)})"]


def move_slot(cluster: RedisCluster, key: str) -> str:
    """Reshard: move the (empty) slot of ``key`` to another master, as ``redis-cli
    --cluster reshard`` does; the URL of the master that serves it now."""
    nodes = [redis.Redis.from_url(url, decode_responses=True) for url in cluster.nodes]
    try:
        slot = nodes[0].cluster("keyslot", key)
        ids = [n.cluster("myid") for n in nodes]
        owner = next(i for i, n in enumerate(nodes) if any(a <= slot <= b for a, b in my_slots(n)))
        target = (owner + 1) % len(nodes)
        nodes[target].cluster("setslot", slot, "IMPORTING", ids[owner])
        nodes[owner].cluster("setslot", slot, "MIGRATING", ids[target])
        for i in [target, owner, *(i for i in range(len(nodes)) if i not in (owner, target))]:
            nodes[i].cluster("setslot", slot, "NODE", ids[target])
        return cluster.nodes[target]
    finally:
        for n in nodes:
            n.close()


def my_slots(node: redis.Redis) -> list[tuple[int, int]]:
    mine = next(n for n in node.cluster("nodes").values() if "myself" in n["flags"])
    return [(int(a), int(b)) for a, b in mine["slots"]]


@on_session_loop
async def test_a_packed_write_follows_a_slot_moved_to_another_node(
    store: RedisStore, redis_cluster_srv: RedisCluster
) -> None:
    """After the store's client read the layout, the slot of a new workflow moves to
    another master: its build, sent packed to the old master, is refused there (MOVED,
    nothing written), and the store reads the layout again and sends it to the new one."""
    await store.ping()  # the client knows the layout now
    wf = uuid.uuid4().hex
    now_at = move_slot(redis_cluster_srv, store.hash_key(wf))
    await store.write(wf, {"r": "{}", "r:status": "pending"}, {"items:r": ["a", "b"]})
    assert await store.read(wf, ["r:status"]) == ["pending"]
    with redis.Redis.from_url(now_at, decode_responses=True) as node:
        assert node.hget(store.hash_key(wf), "r:status") == "pending"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://127.0.0.1:7000/2", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000/0?bogus_option=1", "cannot use the Redis Cluster URL"),
        ("redis+cluster://127.0.0.1:notaport", "cannot use the Redis Cluster URL"),
        ("unix+cluster:///tmp/redis.sock", "is not a Redis URL"),
    ],
)
def test_a_bad_cluster_url_is_a_configuration_error(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        RedisStore(url)


def test_a_cluster_client_object_is_refused_with_the_url_to_use() -> None:
    client = aioredis.RedisCluster(host="127.0.0.1", port=7000)
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        RedisStore(client)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        Mageflow(client)


def test_the_cluster_url_selects_the_cluster_store(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mf = Mageflow(backend=ManualBackend(), redis_url=redis_cluster_url)
    assert isinstance(mf.store, RedisStore) and mf.store.cluster
    monkeypatch.setenv("MAGEFLOW_REDIS_URL", redis_cluster_url)
    from_env = Mageflow(backend=ManualBackend())
    assert isinstance(from_env.store, RedisStore) and from_env.store.cluster
    password = redis_cluster_url.replace("redis+cluster://", "redis+cluster://u:secret@")
    assert "secret" not in RedisStore(password)._unavailable(OSError("x")).args[0]


@on_session_loop
async def test_an_unreachable_cluster_is_store_unavailable() -> None:
    store = RedisStore("redis+cluster://u:secret@127.0.0.1:1", prefix="gone")
    with pytest.raises(StoreUnavailableError) as raised:
        await store.ping()
    assert "secret" not in str(raised.value)
    await store.close()
