"""``RedisStore``: workflow records in Redis; a script runs with one EVALSHA round trip."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mageflow.errors import EngineError, StoreUnavailableError
from mageflow.store.base import Reply, Script, StateStore

DEFAULT_PREFIX = "mageflow"
DEFAULT_ACTIVE_TTL = 7 * 24 * 3600
DEFAULT_FINISHED_TTL = 24 * 3600


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisStore(StateStore):
    """State in Redis under ``prefix``. Keys of one workflow share the hash tag ``{wf}``,
    so one script call touches one Cluster slot. JSON only, never pickle."""

    def __init__(
        self,
        client: aioredis.Redis | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        active_ttl: int = DEFAULT_ACTIVE_TTL,
        finished_ttl: int = DEFAULT_FINISHED_TTL,
        max_connections: int = 64,
    ) -> None:
        if isinstance(client, str):
            self.url = client
            parsed = aioredis.BlockingConnectionPool.from_url(client)
            self._pool_args: dict[str, Any] = dict(parsed.connection_kwargs)
            self._connection_class: Any = parsed.connection_class
        else:
            kw = client.connection_pool.connection_kwargs
            self.url = f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
            self._pool_args = dict(kw)
            self._connection_class = client.connection_pool.connection_class
        # JSON strings in, JSON strings out, whatever the caller's client was set to
        self._pool_args["decode_responses"] = True
        self._max_connections = max_connections
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self.prefix = prefix
        self.active_ttl = active_ttl
        self.finished_ttl = finished_ttl

    @property
    def client(self) -> aioredis.Redis:
        """The client of the running event loop. redis-py connections belong to the loop
        that opened them, so each loop (e.g. one per test) gets its own pool."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # a blocking pool queues callers when all connections are busy instead of
            # failing a transition under a burst of concurrent completions
            pool = aioredis.BlockingConnectionPool(
                connection_class=self._connection_class,
                max_connections=self._max_connections,
                timeout=30,
                **self._pool_args,
            )
            client = self._clients[loop] = aioredis.Redis(connection_pool=pool)
        return client

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"cannot reach Redis at {redact_url(self.url)}: {exc}. Check MAGEFLOW_REDIS_URL "
            "and that the server is running."
        )

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Reply:
        client = self.client
        try:
            try:
                reply = await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(script.source)
                reply = await client.evalsha(script.sha, len(keys), *keys, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            raise EngineError(f"the engine script failed on {keys[0]}: {exc}") from exc
        if isinstance(reply, list):
            return [str(x) for x in reply]
        return reply  # type: ignore[no-any-return]

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
        async with self.client.pipeline(transaction=True) as pipe:
            if fields:
                pipe.hset(h, mapping=dict(fields))  # type: ignore[arg-type]
            pipe.expire(h, self.active_ttl)
            for name, values in lists.items():
                if values:
                    pipe.rpush(f"{h}:{name}", *values)
                    pipe.expire(f"{h}:{name}", self.active_ttl)
            await self._call(pipe.execute())
        if index:  # another hash slot: a separate call
            await self._call(self.client.zadd(f"{self.prefix}:index", {wf: time.time()}))

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

    async def read_many(self, requests: Sequence[tuple[str, str]]) -> list[str | None]:
        if not requests:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for wf, field_name in requests:
                pipe.hget(self.hash_key(wf), field_name)
            return list(await self._call(pipe.execute()))

    async def set_if_absent(self, wf: str, field_name: str, value: str) -> None:
        await self._call(self.client.hsetnx(self.hash_key(wf), field_name, value))

    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        h = self.hash_key(wf)
        await self._call(self.client.delete(h, *(f"{h}:{name}" for name in lists)))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(f"{self.prefix}:index", wf)
            pipe.zrem(self.live_key, wf)
            await self._call(pipe.execute())

    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        if not fields:
            return []
        values = await self._call(self.client.hmget(self.hash_key(wf), list(fields)))
        return list(values)

    async def read_all(self, wf: str) -> dict[str, str]:
        return dict(await self._call(self.client.hgetall(self.hash_key(wf))))

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
        ids = await self._call(self.client.zrevrange(f"{self.prefix}:index", 0, limit - 1))
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
        pubsub = self.client.pubsub()
        try:
            await self._call(pubsub.subscribe(f"{self.hash_key(wf)}:{channel}"))
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
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
