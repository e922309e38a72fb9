"""``MemoryStore``: the embedded default. The engine's own script runs in-process (see
:mod:`mageflow.store.lua_host`) over in-memory records that expire like Redis keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from mageflow.errors import EngineError
from mageflow.store.base import EVENTS_BATCH, Reply, Script, StateStore, check_ttls
from mageflow.store.keyspace import Keyspace
from mageflow.store.lua_host import LuaHost, ScriptFailed

DEFAULT_ACTIVE_TTL = 7 * 24 * 3600
DEFAULT_FINISHED_TTL = 24 * 3600


class MemoryStore(StateStore):
    """Workflow records inside this process (not shared with other processes). Finished
    workflows expire after ``finished_ttl`` seconds, unfinished ones after ``active_ttl``."""

    def __init__(
        self,
        *,
        prefix: str = "mageflow",
        active_ttl: int = DEFAULT_ACTIVE_TTL,
        finished_ttl: int = DEFAULT_FINISHED_TTL,
    ) -> None:
        check_ttls(active_ttl, finished_ttl)
        self.prefix = prefix
        self.active_ttl = active_ttl
        self.finished_ttl = finished_ttl
        self.url = "memory://"
        self.keyspace = Keyspace()
        self._host = LuaHost(self.keyspace)

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Reply:
        try:
            reply: Reply = self._host.run(script.sha, script.source, keys, args)
        except ScriptFailed as exc:
            raise EngineError(f"the engine script failed on {keys[0]}: {exc}") from exc
        return reply

    async def write(
        self,
        wf: str,
        fields: Mapping[str, str],
        lists: Mapping[str, Sequence[str]],
        index: bool = False,
        identified: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        await self.index_identified(identified or {})
        ks = self.keyspace
        h = self.hash_key(wf)
        if fields:
            ks.hset(h, fields.items())
        ks.expire(h, self.active_ttl)
        for name, values in lists.items():
            if values:
                ks.rpush(f"{h}:{name}", *values)
                ks.expire(f"{h}:{name}", self.active_ttl)
        if index:
            now = time.time()
            ks.zadd(self.index_key, [(now, wf)])
            listed = ks.zset(self.index_key)
            while (oldest := listed.pop_min()) is not None:
                if oldest[1] > now - self.active_ttl:
                    listed[oldest[0]] = oldest[1]  # still young: put back, stop
                    break
            ks.expire(self.index_key, self.active_ttl)

    async def index_identified(self, entries: Mapping[str, Mapping[str, float]]) -> None:
        for label, members in entries.items():
            key = self.identifier_key(label)
            self.keyspace.zadd(key, [(score, m) for m, score in members.items()])
            self.keyspace.expire(key, self.active_ttl)

    async def identified(self, labels: Sequence[str]) -> list[str]:
        sets = sorted((self.keyspace.zset(self.identifier_key(x)) for x in labels), key=len)
        ranked = [m for m, _ in reversed(sets[0].by_rank(0, -1))]
        return [m for m in ranked if all(m in z for z in sets[1:])]

    async def unindex_identified(self, labels: Sequence[str], keys: Sequence[str]) -> None:
        if keys:
            for label in labels:
                self.keyspace.zrem(self.identifier_key(label), *keys)

    async def read_fields(self, requests: Sequence[tuple[str, str]]) -> list[str | None]:
        return [self.keyspace.hget(self.hash_key(wf), f) for wf, f in requests]

    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        h = self.hash_key(wf)
        self.keyspace.delete(h, *(f"{h}:{name}" for name in lists))
        self.keyspace.zrem(self.index_key, wf)
        self.keyspace.zrem(self.live_key, wf)

    async def delete_many(self, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
        for wf, lists in entries:
            await self.delete(wf, lists)

    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        h = self.hash_key(wf)
        return [self.keyspace.hget(h, f) for f in fields]

    async def read_all(self, wf: str) -> dict[str, str]:
        return self.keyspace.hgetall(self.hash_key(wf))

    async def read_many(self, wfs: Sequence[str]) -> list[dict[str, str]]:
        return [self.keyspace.hgetall(self.hash_key(wf)) for wf in wfs]

    async def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        return [self.keyspace.hgetall(key) for key in keys]

    async def read_list(self, wf: str, name: str, start: int = 0, stop: int = -1) -> list[str]:
        return self.keyspace.lrange(f"{self.hash_key(wf)}:{name}", start, stop)

    async def count(self, wf: str, name: str) -> int:
        key = f"{self.hash_key(wf)}:{name}"
        kind = self.keyspace.type_of(key)
        if kind == "set":
            return self.keyspace.scard(key)
        if kind == "zset":
            return self.keyspace.zcard(key)
        if kind == "list":
            return self.keyspace.llen(key)
        return 0

    async def list_workflows(self, limit: int = 100) -> list[str]:
        ranked = self.keyspace.zset(self.index_key).by_rank(0, -1)
        return [wf for wf, _ in reversed(ranked)][:limit]

    async def set_live(self, entries: Mapping[str, float], *, earlier_only: bool = False) -> None:
        if earlier_only:
            live = self.keyspace.zset(self.live_key)
            entries = {wf: s for wf, s in entries.items() if wf not in live or s < live[wf]}
        if entries:
            self.keyspace.zadd(self.live_key, [(s, wf) for wf, s in entries.items()])

    async def drop_live(self, wfs: Sequence[str]) -> None:
        if wfs:
            self.keyspace.zrem(self.live_key, *wfs)

    async def wait_published(
        self,
        wf: str,
        channel: str,
        message: str,
        settled: Callable[[], Awaitable[bool]],
        timeout: float | None,
    ) -> None:
        name = f"{self.hash_key(wf)}:{channel}"
        woken = asyncio.Event()

        def on_message(data: str) -> None:
            if data == message:
                woken.set()

        async def until_settled() -> None:
            while not await settled():
                await woken.wait()
                woken.clear()

        self.keyspace.subscribe(name, on_message)
        try:
            await asyncio.wait_for(until_settled(), timeout)
        except asyncio.TimeoutError as exc:  # not the builtin TimeoutError on 3.10
            raise TimeoutError from exc
        finally:
            self.keyspace.unsubscribe(name, on_message)

    async def read_events(self, wf: str, after: str, timeout: float) -> list[tuple[str, str]]:
        key = self.events_key(wf)
        got = self.keyspace.xread(key, after, EVENTS_BATCH)
        if got or timeout <= 0:
            return got
        woken = asyncio.Event()

        def on_append(_entry_id: str) -> None:
            woken.set()

        self.keyspace.subscribe(key, on_append)
        try:
            await asyncio.wait_for(woken.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        finally:
            self.keyspace.unsubscribe(key, on_append)
        return self.keyspace.xread(key, after, EVENTS_BATCH)

    async def put_worker(self, worker_id: str, info: str, ttl: int) -> None:
        self.keyspace.hset(self.workers_key, [(worker_id, info)])
        self.keyspace.expire(self.workers_key, ttl)

    async def drop_workers(self, worker_ids: Sequence[str]) -> None:
        if worker_ids:
            self.keyspace.hdel(self.workers_key, *worker_ids)

    async def read_workers(self) -> dict[str, str]:
        return self.keyspace.hgetall(self.workers_key)

    async def ping(self) -> None:
        return None
