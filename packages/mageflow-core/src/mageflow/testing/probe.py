"""What the contract tasks observe, readable from the test process.

In-process backends use :class:`MemoryProbe`; worker subprocesses use :class:`RedisProbe`
(``MAGEFLOW_PROBE_URL``). Every record is scoped by a namespace the test puts in the
message (``ns``), so tests sharing workers never see each other's events.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis


class Probe(abc.ABC):
    @abc.abstractmethod
    async def record(self, ns: str, event: str, data: Any) -> None: ...

    @abc.abstractmethod
    async def events(self, ns: str, event: str) -> list[Any]: ...

    @abc.abstractmethod
    async def enter(self, ns: str) -> int:
        """One more task running in ``ns``; returns how many run now."""

    @abc.abstractmethod
    async def leave(self, ns: str) -> None: ...

    @abc.abstractmethod
    async def max_running(self, ns: str) -> int: ...

    @abc.abstractmethod
    async def set_flag(self, ns: str, name: str) -> None: ...

    @abc.abstractmethod
    async def flag(self, ns: str, name: str) -> bool: ...

    async def close(self) -> None:
        return None

    async def wait_until(
        self, check: Callable[[], Awaitable[bool]], timeout: float, what: str
    ) -> None:
        """Test-side helper: re-check until true (tests may poll; the product never does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await check():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)


class MemoryProbe(Probe):
    def __init__(self) -> None:
        self._events: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self._running: dict[str, int] = defaultdict(int)
        self._max: dict[str, int] = defaultdict(int)
        self._flags: set[tuple[str, str]] = set()

    async def record(self, ns: str, event: str, data: Any) -> None:
        self._events[(ns, event)].append(json.loads(json.dumps(data)))

    async def events(self, ns: str, event: str) -> list[Any]:
        return list(self._events[(ns, event)])

    async def enter(self, ns: str) -> int:
        self._running[ns] += 1
        self._max[ns] = max(self._max[ns], self._running[ns])
        return self._running[ns]

    async def leave(self, ns: str) -> None:
        self._running[ns] -= 1

    async def max_running(self, ns: str) -> int:
        return self._max[ns]

    async def set_flag(self, ns: str, name: str) -> None:
        self._flags.add((ns, name))

    async def flag(self, ns: str, name: str) -> bool:
        return (ns, name) in self._flags


_ENTER = """
local n = redis.call('INCR', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > m then redis.call('SET', KEYS[2], n) end
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 3600)
return n
"""


class RedisProbe(Probe):
    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_url(url, decode_responses=True)
        self._enter = self.client.register_script(_ENTER)

    def _k(self, ns: str, *parts: str) -> str:
        return ":".join(("mageflow-probe", ns, *parts))

    async def record(self, ns: str, event: str, data: Any) -> None:
        key = self._k(ns, "ev", event)
        await self.client.rpush(key, json.dumps(data))
        await self.client.expire(key, 3600)

    async def events(self, ns: str, event: str) -> list[Any]:
        raw = await self.client.lrange(self._k(ns, "ev", event), 0, -1)
        return [json.loads(x) for x in raw]

    async def enter(self, ns: str) -> int:
        return int(await self._enter(keys=[self._k(ns, "run"), self._k(ns, "max")]))

    async def leave(self, ns: str) -> None:
        await self.client.decr(self._k(ns, "run"))

    async def max_running(self, ns: str) -> int:
        return int(await self.client.get(self._k(ns, "max")) or 0)

    async def set_flag(self, ns: str, name: str) -> None:
        await self.client.set(self._k(ns, "flag", name), "1", ex=3600)

    async def flag(self, ns: str, name: str) -> bool:
        return bool(await self.client.exists(self._k(ns, "flag", name)))

    async def close(self) -> None:
        await self.client.aclose()


_probe: Probe | None = None


def get_probe() -> Probe:
    """The process-wide probe: Redis when ``MAGEFLOW_PROBE_URL`` is set, else memory."""
    global _probe
    if _probe is None:
        url = os.environ.get("MAGEFLOW_PROBE_URL")
        _probe = RedisProbe(url) if url else MemoryProbe()
    return _probe


def set_probe(probe: Probe | None) -> None:
    global _probe
    _probe = probe
