"""``RedisStore``: workflow records in Redis; a script runs with one EVALSHA round trip."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mageflow.errors import ConfigurationError, EngineError, StoreUnavailableError
from mageflow.store.base import CHUNK, EVENTS_BATCH, Reply, Script, StateStore, check_ttls
from mageflow.store.connect import (
    CLUSTER_CLIENT_REFUSED,
    CLUSTER_SCHEMES,
    Client,
    ClusterLink,
    Link,
    ServerLink,
    _described,
    redact_url,
)

DEFAULT_PREFIX = "mageflow"
DEFAULT_ACTIVE_TTL = 7 * 24 * 3600
DEFAULT_FINISHED_TTL = 24 * 3600
PACK_OVER = 1_000
"""Script calls with this many arguments or more are packed by :func:`_resp`."""


URL_SCHEMES = ("redis", "rediss", "unix")
"""The URL schemes of a single Redis server (``memory://`` selects the in-memory store,
``redis+cluster://`` a Redis Cluster: :data:`~mageflow.store.connect.CLUSTER_SCHEMES`)."""


_NO_FUNCTIONS = object()
"""The server runs no Redis functions: the script goes by EVALSHA."""


def _busy(exc: ResponseError) -> bool:
    """Redis is running a long script (BUSY): it ran nothing of this call, which may be
    sent again once the script ended, like a call to a server that was down."""
    return str(exc).startswith("BUSY")


def _texts(reply: Any) -> Reply:
    """A script's reply with the integers in its arrays as text (nested arrays kept)."""
    if isinstance(reply, list):
        return [_texts(x) if isinstance(x, list) else str(x) for x in reply]
    return cast(Reply, reply)


def _function_missing(exc: ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def _functions_unsupported(exc: ResponseError) -> bool:
    """Redis < 7 (no FCALL / FUNCTION), or an ACL that refuses them to this user."""
    return isinstance(exc, NoPermissionError) or "unknown command" in str(exc).lower()


def check_store_url(url: str) -> str:
    """``url`` when it names a Redis server (``redis://``, ``rediss://``, ``unix://``), a
    Redis Cluster (``redis+cluster://``, ``rediss+cluster://``) or the in-memory store
    (``memory://``). Raises :class:`ConfigurationError` otherwise."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in (*URL_SCHEMES, *CLUSTER_SCHEMES, "memory"):
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a Redis URL; use redis://host:6379/0, "
            "rediss://host:6380/0, unix:///path/to/redis.sock, redis+cluster://host:7000 "
            "(a Redis Cluster) or memory:// (the in-memory store)"
        )
    return url


def server_identity(connection_kwargs: Mapping[str, Any]) -> str:
    """The server and database a redis-py client's connection settings point at, as a
    URL without credentials (equal texts: the same server and database)."""
    return _described(connection_kwargs)


def _resp(args: Sequence[str]) -> bytes:
    """One command in the Redis protocol (RESP2)."""
    encoded = [a.encode() for a in args]
    parts = [b"*%d\r\n" % len(encoded)]
    parts += [b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded]
    return b"".join(parts)


_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    RedisClusterException,
    AskError,  # and MovedError: a cluster's slot is moving to another node
    TryAgainError,
)
"""The server (or a cluster's node, or the cluster as a whole) cannot answer now."""

MAX_BLOCK = 2.0
"""Longest server-side wait (s) of a blocking read, well below redis-py's socket timeout."""


class RedisStore(StateStore):
    """State in Redis under ``prefix``. Keys of one workflow share the hash tag ``{wf}``,
    so one script call touches one Cluster slot. JSON only, never pickle.

    ``client``: a ``redis://``, ``rediss://`` or ``unix://`` URL or a
    ``redis.asyncio.Redis`` (its connection settings are used), or a ``redis+cluster://``
    / ``rediss+cluster://`` URL naming any node of a Redis Cluster (statistics are then
    off: see ``docs/redis-cluster.md``). Raises :class:`ConfigurationError` for a bad URL."""

    def __init__(
        self,
        client: aioredis.Redis | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        active_ttl: int = DEFAULT_ACTIVE_TTL,
        finished_ttl: int = DEFAULT_FINISHED_TTL,
        max_connections: int = 64,
    ) -> None:
        check_ttls(active_ttl, finished_ttl)
        if isinstance(client, aioredis.RedisCluster):
            raise ConfigurationError(CLUSTER_CLIENT_REFUSED)
        if isinstance(client, str):
            check_store_url(client)
        if isinstance(client, str) and client.lower().startswith(CLUSTER_SCHEMES):
            self._link: Link = ClusterLink(client)
        else:
            self._link = ServerLink(client)
        self.url = self._link.url
        self._max_connections = max_connections
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = (
            weakref.WeakKeyDictionary()
        )
        self.prefix = prefix
        self.active_ttl = active_ttl
        self.finished_ttl = finished_ttl
        self._functions: bool | None = False if self._link.cluster else None
        """Scripts run as Redis functions (``FCALL``; Redis 7+): ``None`` until the first
        call finds out. A cluster would need every library on every primary: EVALSHA."""

    @property
    def server(self) -> str:
        """The server and database holding the state (:func:`server_identity`; a
        cluster's names no single server)."""
        return self._link.server

    @property
    def runs_functions(self) -> bool | None:
        """Whether the engine runs as a Redis function (``FCALL``, Redis 7+: its library
        is loaded once) rather than by ``EVALSHA``; ``None`` until the first call."""
        return self._functions

    @property
    def cluster(self) -> bool:
        """The store is on a Redis Cluster (a ``redis+cluster://`` URL)."""
        return self._link.cluster

    @property
    def stats_key(self) -> str | None:
        # on a cluster the statistics' hashes would be a second slot in every script call
        return None if self.cluster else super().stats_key

    @property
    def client(self) -> Client:
        """The client of the running event loop. redis-py connections belong to the loop
        that opened them, so each loop (e.g. one per test) gets its own pool."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._link.new_client(self._max_connections)
        return client

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        if isinstance(exc, ResponseError) and _busy(exc):
            return StoreUnavailableError(
                f"Redis at {redact_url(self.url)} is busy running a script ({exc}); nothing "
                "of this call ran, and workers send it again once the script ended. A long "
                "script elsewhere on this server (SCRIPT KILL ends it) or lua-time-limit."
            )
        return StoreUnavailableError(
            f"cannot reach Redis at {redact_url(self.url)}: {exc}. Check MAGEFLOW_REDIS_URL "
            "and that the server is running."
        )

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            if _busy(exc):
                raise self._unavailable(exc) from exc
            raise

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        if len(args) < PACK_OVER:
            return await self._link.execute(
                self.client, "EVALSHA", script.sha, len(keys), *keys, *args
            )
        command = ["EVALSHA", script.sha, str(len(keys)), *keys, *args]
        return (await self._send_packed([command], keys[0]))[0]

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        if len(args) < PACK_OVER:
            return await self._link.execute(self.client, "FCALL", name, len(keys), *keys, *args)
        command = ["FCALL", name, str(len(keys)), *keys, *args]
        return (await self._send_packed([command], keys[0]))[0]

    async def _run_function(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run ``script`` as a Redis function, loading its library when the server does not
        have it yet (a first call, a restarted server without persistence, FUNCTION FLUSH).
        Returns ``_NO_FUNCTIONS`` (and remembers it) when the server has no functions
        (Redis < 7) or refuses them to this user."""
        name = script.function
        assert name is not None
        try:
            reply = await self._fcall(name, keys, args)
        except ResponseError as exc:
            if not _function_missing(exc):
                if _functions_unsupported(exc):
                    self._functions = False
                    return _NO_FUNCTIONS
                raise
        else:  # the library was there already (another process loaded it)
            self._functions = True
            return reply
        try:
            await self.client.execute_command("FUNCTION", "LOAD", "REPLACE", script.library)
        except ResponseError as exc:
            if _functions_unsupported(exc):
                self._functions = False
                return _NO_FUNCTIONS
            raise
        self._functions = True
        return await self._fcall(name, keys, args)

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Reply:
        try:
            reply: Any = _NO_FUNCTIONS
            if self._functions is not False and script.function is not None:
                reply = await self._run_function(script, keys, args)
            if reply is _NO_FUNCTIONS:
                try:
                    reply = await self._evalsha(script, keys, args)
                except NoScriptError:
                    await self.client.script_load(script.source)
                    reply = await self._evalsha(script, keys, args)
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            if _busy(exc):
                raise self._unavailable(exc) from exc
            raise EngineError(f"the engine script failed on {keys[0]}: {exc}") from exc
        return _texts(reply)

    async def write(
        self,
        wf: str,
        fields: Mapping[str, str],
        lists: Mapping[str, Sequence[str]],
        index: bool = False,
        identified: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        await self.index_identified(identified or {})
        h = self.hash_key(wf)
        pairs = [x for pair in fields.items() for x in pair]
        big = len(pairs) > 2 * CHUNK or any(len(v) > CHUNK for v in lists.values())
        commands: list[list[str]] = []
        for name, values in lists.items():
            key = f"{h}:{name}"
            for start in range(0, len(values), CHUNK):
                commands.append(["RPUSH", key, *values[start : start + CHUNK]])
                if start == 0:
                    commands.append(["EXPIRE", key, str(self.active_ttl)])
        for start in range(0, len(pairs), 2 * CHUNK):
            commands.append(["HSET", h, *pairs[start : start + 2 * CHUNK]])
            if start == 0:
                commands.append(["EXPIRE", h, str(self.active_ttl)])
        if not big:  # one command per key: one MULTI/EXEC
            commands = [["MULTI"], *commands, ["EXEC"]]
        # else in order, in one round trip, not one transaction (see StateStore.write)
        await self._call(self._send_packed(commands, h))
        if index:  # another hash slot: a separate call
            now, key = time.time(), self.index_key
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {wf: now})
                pipe.zremrangebyscore(key, "-inf", now - self.active_ttl)
                pipe.expire(key, self.active_ttl)
                await self._call(pipe.execute())

    async def index_identified(self, entries: Mapping[str, Mapping[str, float]]) -> None:
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:  # one key per label
            for label, members in entries.items():
                key = self.identifier_key(label)
                pipe.zadd(key, dict(members))
                pipe.expire(key, self.active_ttl)
            await self._call(pipe.execute())

    async def identified(self, labels: Sequence[str]) -> list[str]:
        keys = [self.identifier_key(label) for label in labels]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcard(key)
            sizes = await self._call(pipe.execute())
        smallest = keys[min(range(len(keys)), key=lambda i: sizes[i])]
        ranked = [str(m) for m in await self._call(self.client.zrevrange(smallest, 0, -1))]
        others = [k for k in keys if k != smallest]
        if not ranked or not others:
            return ranked
        async with self.client.pipeline(transaction=False) as pipe:
            for key in others:
                pipe.zmscore(key, ranked)
            scores = await self._call(pipe.execute())
        return [m for i, m in enumerate(ranked) if all(s[i] is not None for s in scores)]

    async def unindex_identified(self, labels: Sequence[str], keys: Sequence[str]) -> None:
        if not keys:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for label in labels:
                pipe.zrem(self.identifier_key(label), *keys)
            await self._call(pipe.execute())

    async def read_fields(self, requests: Sequence[tuple[str, str]]) -> list[str | None]:
        if not requests:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for wf, field_name in requests:
                pipe.hget(self.hash_key(wf), field_name)
            return list(await self._call(pipe.execute()))

    async def _send_packed(self, commands: Sequence[Sequence[str]], key: str) -> list[Any]:
        """Run ``commands`` (on ``key`` and keys of its slot) in order in one round trip
        (``MULTI`` ... ``EXEC`` among them make a transaction), packed here: redis-py
        packs each argument in several Python steps, and a bulk build has hundreds of
        thousands of them. Returns the replies; raises the first error reply once all
        were read. On a cluster whose slot moved to another node, every command was
        refused (``MOVED``): the layout is read again and the commands sent once more."""
        try:
            return await self._send_once(commands, key)
        except MovedError:
            await self._link.refresh(self.client)
            return await self._send_once(commands, key)

    async def _send_once(self, commands: Sequence[Sequence[str]], key: str) -> list[Any]:
        replies: list[Any] = []
        first_error: ResponseError | None = None
        async with self._link.connection(self.client, key) as conn:
            await conn.send_packed_command([_resp(command) for command in commands])
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    first_error = first_error or exc
        if first_error is None:  # a MULTI/EXEC reply holds its commands' errors
            nested = (r for r in replies if isinstance(r, list))
            first_error = next((e for r in nested for e in r if isinstance(e, ResponseError)), None)
        if first_error is not None:
            raise first_error
        return replies

    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        await self.delete_many([(wf, lists)])

    async def delete_many(self, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
        for start in range(0, len(entries), CHUNK):
            part = entries[start : start + CHUNK]
            async with self.client.pipeline(transaction=False) as pipe:
                for wf, lists in part:
                    h = self.hash_key(wf)
                    pipe.delete(h, *(f"{h}:{name}" for name in lists))
                wfs = [wf for wf, _ in part]
                pipe.zrem(self.index_key, *wfs)
                pipe.zrem(self.live_key, *wfs)
                await self._call(pipe.execute())

    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        if not fields:
            return []
        values = await self._call(self.client.hmget(self.hash_key(wf), list(fields)))
        return list(values)

    async def read_all(self, wf: str) -> dict[str, str]:
        return dict(await self._call(self.client.hgetall(self.hash_key(wf))))

    async def read_many(self, wfs: Sequence[str]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for start in range(0, len(wfs), CHUNK):
            async with self.client.pipeline(transaction=False) as pipe:
                for wf in wfs[start : start + CHUNK]:
                    pipe.hgetall(self.hash_key(wf))
                out.extend(dict(r) for r in await self._call(pipe.execute()))
        return out

    async def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return [dict(r) for r in await self._call(pipe.execute())]

    async def read_list(self, wf: str, name: str, start: int = 0, stop: int = -1) -> list[str]:
        key = f"{self.hash_key(wf)}:{name}"
        return list(await self._call(self.client.lrange(key, start, stop)))

    async def count(self, wf: str, name: str) -> int:
        key = f"{self.hash_key(wf)}:{name}"
        kind = await self._call(self.client.type(key))
        if kind == "set":
            return int(await self._call(self.client.scard(key)))
        if kind == "zset":
            return int(await self._call(self.client.zcard(key)))
        if kind == "list":
            return int(await self._call(self.client.llen(key)))
        return 0

    async def list_workflows(self, limit: int = 100) -> list[str]:
        ids = await self._call(self.client.zrevrange(self.index_key, 0, limit - 1))
        return [str(i) for i in ids]

    async def set_live(self, entries: Mapping[str, float], *, earlier_only: bool = False) -> None:
        if entries:
            await self._call(self.client.zadd(self.live_key, dict(entries), lt=earlier_only))

    async def drop_live(self, wfs: Sequence[str]) -> None:
        if wfs:
            await self._call(self.client.zrem(self.live_key, *wfs))

    async def wait_published(
        self,
        wf: str,
        channel: str,
        message: str,
        settled: Callable[[], Awaitable[bool]],
        timeout: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        name = f"{self.hash_key(wf)}:{channel}"
        pubsub = await self._call(self._link.pubsub(self.client, name))
        try:
            await self._call(pubsub.subscribe(name))
            while not await settled():
                # woken by the script's PUBLISH; re-checked at most every 5 s as a safety
                # net should a message be lost on a reconnect
                left = 5.0
                if deadline is not None:
                    left = min(left, deadline - loop.time())
                    if left <= 0:
                        raise TimeoutError
                while left > 0:
                    started = loop.time()
                    msg = await self._call(
                        pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                    )
                    if msg is None or msg.get("data") == message:
                        break
                    left -= loop.time() - started
        finally:
            await pubsub.aclose()

    async def read_events(self, wf: str, after: str, timeout: float) -> list[tuple[str, str]]:
        # BLOCK 0 would wait forever; and a block as long as the socket timeout (5 s by
        # default since redis-py 8) would end in a read timeout: the caller asks again
        block = int(min(timeout, MAX_BLOCK) * 1000) if timeout > 0 else None
        reply = await self._call(
            self.client.xread({self.events_key(wf): after}, count=EVENTS_BATCH, block=block)
        )
        if not reply:
            return []
        return [(entry_id, values.get("e", "")) for entry_id, values in reply[0][1]]

    async def put_worker(self, worker_id: str, info: str, ttl: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.workers_key, worker_id, info)
            pipe.expire(self.workers_key, ttl)
            await self._call(pipe.execute())

    async def drop_workers(self, worker_ids: Sequence[str]) -> None:
        if worker_ids:
            await self._call(self.client.hdel(self.workers_key, *worker_ids))

    async def read_workers(self) -> dict[str, str]:
        reply: dict[str, str] = await self._call(self.client.hgetall(self.workers_key))
        return reply

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
