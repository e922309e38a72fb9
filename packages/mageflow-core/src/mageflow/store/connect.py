"""How :class:`~mageflow.store.RedisStore` reaches its Redis: one server
(:class:`ServerLink`) or a Redis Cluster (:class:`ClusterLink`, a ``redis+cluster://``
URL). A link builds the client of one event loop and lends the raw connection that holds
a given key, for commands packed by the store itself."""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import RedisClusterException

from mageflow.errors import ConfigurationError
from mageflow.store.pool import LeanBlockingConnectionPool

Client = aioredis.Redis | aioredis.RedisCluster
"""The redis-py client a link builds."""

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""URL schemes of a Redis Cluster store: any node as ``host:port``, the client finds the
others (``rediss+cluster`` speaks TLS)."""

CLUSTER_CLIENT_REFUSED = (
    "pass a Redis Cluster as a URL, redis+cluster://host:port (MAGEFLOW_REDIS_URL or "
    "redis_url=), not as a client: the store opens one client per event loop from it"
)

_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<auth>[^/?#]*)(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?P<frag>#.*)?",
    re.S,
)
_QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)[^&]*")


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or the query string, the only place a
    ``unix://`` URL has one) replaced by ``***``; everything else is kept as written (an
    IPv6 host keeps its brackets)."""
    m = _URL.fullmatch(url)
    if m is None:
        return "<a URL that cannot be parsed>"
    userinfo, at, hostport = m["auth"].rpartition("@")
    auth = f"{userinfo.partition(':')[0]}:***@{hostport}" if at and ":" in userinfo else m["auth"]
    query = "" if m["query"] is None else "?" + _QUERY_PASSWORD.sub(r"\1\2***", m["query"])
    return f"{m['scheme'] or ''}{auth}{m['path']}{query}{m['frag'] or ''}"


def _described(kw: Mapping[str, Any]) -> str:
    """A URL for the connection settings of a client the caller passed (no password)."""
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    host = str(kw.get("host", "?"))
    if ":" in host:
        host = f"[{host}]"
    return f"redis://{host}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Link(abc.ABC):
    """The connection settings of a store; builds clients, never holds one."""

    url: str
    server: str
    """The server and database, as ``store.redis.server_identity`` names them."""
    cluster: bool = False

    @abc.abstractmethod
    def new_client(self, max_connections: int) -> Client:
        """A client for the running event loop (redis-py connections belong to one loop)."""

    @abc.abstractmethod
    def connection(self, client: Any, key: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """A raw connection of ``client`` to the server that holds ``key``."""

    async def execute(self, client: Any, *args: Any) -> Any:
        """One command (a script call) on ``client``, its reply or its error reply raised."""
        return await client.execute_command(*args)

    async def pubsub(self, client: Any, channel: str) -> PubSub:
        """A pub/sub object that will receive what is published on ``channel``."""
        return client.pubsub()  # type: ignore[no-any-return]

    async def refresh(self, client: Any) -> None:
        """Read the servers' layout again (a cluster's slot moved)."""


async def _round_trip(conn: Any, args: tuple[Any, ...]) -> Any:
    await conn.send_packed_command(conn.pack_command(*args))
    return await conn.read_response()


class ServerLink(Link):
    """One Redis server, from a URL or from the pool of a client the caller passed."""

    def __init__(self, client: aioredis.Redis | str) -> None:
        if isinstance(client, str):
            self.url = client
            try:
                parsed = aioredis.BlockingConnectionPool.from_url(client)
            except ValueError as exc:
                raise ConfigurationError(
                    f"cannot use the Redis URL {redact_url(client)!r}: {exc}"
                ) from None
            self._pool_args: dict[str, Any] = dict(parsed.connection_kwargs)
            self._connection_class: Any = parsed.connection_class
        else:
            kw = client.connection_pool.connection_kwargs
            self.url = _described(kw)
            self._pool_args = dict(kw)
            self._connection_class = client.connection_pool.connection_class
        # JSON strings in, JSON strings out, whatever the caller's client was set to
        self._pool_args["decode_responses"] = True
        self.server = _described(self._pool_args)

    def new_client(self, max_connections: int) -> Client:
        # a blocking pool queues callers when all connections are busy instead of
        # failing a transition under a burst of concurrent completions
        pool = LeanBlockingConnectionPool(
            connection_class=self._connection_class,
            max_connections=max_connections,
            timeout=30,
            **self._pool_args,
        )
        return aioredis.Redis(connection_pool=pool)

    async def execute(self, client: Any, *args: Any) -> Any:
        """The command on a pooled connection, retried as redis-py retries it (a dropped
        connection is opened again), without the client's per-command bookkeeping
        (observability events, response callbacks: a script call needs none)."""
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(
                lambda: _round_trip(conn, args), lambda _error: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def connection(self, client: Any, key: str) -> AsyncIterator[Any]:
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            yield conn
        except BaseException:
            await conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            await pool.release(conn)


class ClusterLink(Link):
    """A Redis Cluster named by ``redis+cluster://[user:password@]host:port`` (any node).
    Cluster nodes have database 0 only; a ``unix`` socket cannot reach a cluster."""

    cluster = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.server = f"cluster:{redact_url(url)}"  # never one server's identity
        scheme, _, rest = url.partition("://")
        plain = f"{scheme.lower().removesuffix('+cluster')}://{rest}"
        try:
            kwargs: dict[str, Any] = dict(parse_url(plain))
        except ValueError as exc:
            raise ConfigurationError(
                f"cannot use the Redis Cluster URL {redact_url(url)!r}: {exc}"
            ) from None
        if kwargs.pop("db", 0) != 0:
            raise ConfigurationError(
                f"a Redis Cluster has database 0 only: drop the database from {redact_url(url)!r}"
            )
        if kwargs.pop("connection_class", None) is SSLConnection:
            kwargs["ssl"] = True
        kwargs["decode_responses"] = True
        try:  # refuses unknown options now, not at the first use
            aioredis.RedisCluster(**kwargs)
        except (TypeError, RedisClusterException) as exc:
            raise ConfigurationError(
                f"cannot use the Redis Cluster URL {redact_url(url)!r}: {exc}"
            ) from None
        self._kwargs = kwargs

    def new_client(self, max_connections: int) -> Client:
        # a cluster client fails a command past its bound (per node) instead of queueing
        # it like the store's blocking pool: left unbounded, as redis-py's default
        del max_connections
        return aioredis.RedisCluster(**self._kwargs)

    @contextlib.asynccontextmanager
    async def connection(self, client: Any, key: str) -> AsyncIterator[Any]:
        await client.initialize()
        node = client.get_node_from_key(key)
        conn = node.acquire_connection()
        try:
            yield conn
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)

    async def refresh(self, client: Any) -> None:
        await client.nodes_manager.initialize()

    async def pubsub(self, client: Any, channel: str) -> PubSub:
        # a PUBLISH reaches every node of a cluster: subscribe on the node of the channel
        await client.initialize()
        node = client.get_node_from_key(channel)
        return client.pubsub(node=node)  # type: ignore[no-any-return]
