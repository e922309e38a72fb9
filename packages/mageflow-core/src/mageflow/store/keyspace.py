"""An in-process keyspace with Redis semantics for the commands the engine uses.

Values are hashes (``dict``), lists (``list``: O(1) index, a range costs its length, as
the engine's swarm cursor needs), sets and sorted sets (``dict`` member -> score); keys
expire like Redis keys (checked on access, swept at most once a second), so a long-lived
embedded process frees finished workflows. Not thread-safe: one event loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from typing import Any


class WrongTypeError(Exception):
    """A command was applied to a key holding another kind of value."""


class ZSet(dict[str, float]):
    """A sorted set: member -> score. ``pop_min`` keeps a heap once first used, so a
    queue drained one member at a time costs O(log n) per pop, as in Redis."""

    _heap: list[tuple[float, str]] | None = None

    def __setitem__(self, member: str, score: float) -> None:
        super().__setitem__(member, score)
        if self._heap is not None:
            heapq.heappush(self._heap, (score, member))

    def pop_min(self) -> tuple[str, float] | None:
        if self._heap is None:
            self._heap = [(s, m) for m, s in self.items()]
            heapq.heapify(self._heap)
        while self._heap:
            score, member = heapq.heappop(self._heap)
            if self.get(member) == score:
                del self[member]
                return member, score
        return None

    def by_score(self, high: float, limit: int | None = None) -> list[str]:
        ordered = sorted((s, m) for m, s in self.items() if s <= high)
        return [m for _, m in ordered[: limit if limit is not None and limit >= 0 else None]]

    def by_rank(self, start: int, stop: int) -> list[tuple[str, float]]:
        ordered = sorted((s, m) for m, s in self.items())
        n = len(ordered)
        start = max(start + n if start < 0 else start, 0)
        stop = stop + n if stop < 0 else stop
        return [(m, s) for s, m in ordered[start : stop + 1]]


class Stream(list[tuple[str, str]]):
    """A stream: ``(id, value)`` entries in id order (one field per entry, which is all
    the engine writes); ids are ``<ms>-<seq>`` as Redis makes them."""

    last: tuple[int, int] = (0, 0)


def stream_id(text: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def score_text(score: float) -> str:
    """A score as Redis prints it."""
    return str(int(score)) if score == int(score) else format(score, ".17g")


class Keyspace:
    """Keys, their expiry, and pub/sub channels."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.frozen: float | None = None
        """While a script runs, the time it started (Redis freezes time in a script)."""
        self.data: dict[str, Any] = {}
        self.expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._next_sweep = 0.0
        self.subscribers: dict[str, list[Callable[[str], None]]] = {}

    # -- keys and expiry ----------------------------------------------------------------
    def _live(self, key: str) -> Any:
        value = self.data.get(key)
        if value is not None and key in self.expires:
            now = self.frozen if self.frozen is not None else self.clock()
            if self.expires[key] <= now:
                self._drop(key)
                return None
        return value

    def _drop(self, key: str) -> None:
        self.data.pop(key, None)
        self.expires.pop(key, None)

    def sweep(self) -> None:
        """Delete expired keys (at most once a second; cheap otherwise)."""
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self.expires.get(key) == at:
                self._drop(key)

    def _typed(self, key: str, kind: type, create: bool) -> Any:
        value = self._live(key)
        if value is None:
            if not create:
                return None
            value = self.data[key] = ZSet() if kind is ZSet else kind()
        elif type(value) is not kind:
            raise WrongTypeError(f"WRONGTYPE {key} holds a {type(value).__name__}")
        return value

    def _cleanup(self, key: str, value: Any) -> None:
        if not value:
            self._drop(key)

    def exists(self, key: str) -> int:
        return int(self._live(key) is not None)

    def delete(self, *keys: str) -> int:
        n = 0
        for key in keys:
            if self._live(key) is not None:
                n += 1
            self._drop(key)
        return n

    def expire(self, key: str, seconds: int) -> int:
        if self._live(key) is None:
            return 0
        if seconds <= 0:
            self._drop(key)
            return 1
        at = self.clock() + seconds
        self.expires[key] = at
        heapq.heappush(self._heap, (at, key))
        return 1

    def type_of(self, key: str) -> str:
        value = self._live(key)
        kinds: dict[type, str] = {
            dict: "hash",
            list: "list",
            set: "set",
            ZSet: "zset",
            Stream: "stream",
        }
        return kinds.get(type(value), "none")

    # -- hashes ---------------------------------------------------------------------------
    def hget(self, key: str, field: str) -> str | None:
        h = self._typed(key, dict, False)
        return None if h is None else h.get(field)

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._typed(key, dict, False) or {})

    def hset(self, key: str, pairs: Iterable[tuple[str, str]]) -> int:
        h = self._typed(key, dict, True)
        added = 0
        for f, v in pairs:
            added += f not in h
            h[f] = v
        return added

    def hsetnx(self, key: str, field: str, value: str) -> int:
        h = self._typed(key, dict, True)
        if field in h:
            return 0
        h[field] = value
        return 1

    def hdel(self, key: str, *fields: str) -> int:
        h = self._typed(key, dict, False)
        if h is None:
            return 0
        n = sum(h.pop(f, None) is not None for f in fields)
        self._cleanup(key, h)
        return n

    def hincrby(self, key: str, field: str, by: int) -> int:
        h = self._typed(key, dict, True)
        value = int(h.get(field, "0")) + by
        h[field] = str(value)
        return value

    # -- lists ----------------------------------------------------------------------------
    def rpush(self, key: str, *values: str) -> int:
        lst = self._typed(key, list, True)
        lst.extend(values)
        return len(lst)

    def lpop(self, key: str) -> str | None:
        lst = self._typed(key, list, False)
        if not lst:
            return None
        value: str = lst.pop(0)
        self._cleanup(key, lst)
        return value

    def llen(self, key: str) -> int:
        return len(self._typed(key, list, False) or ())

    def lindex(self, key: str, index: int) -> str | None:
        lst = self._typed(key, list, False)
        if not lst or not -len(lst) <= index < len(lst):
            return None
        value: str = lst[index]
        return value

    def lrange(self, key: str, start: int, stop: int) -> list[str]:
        lst = self._typed(key, list, False)
        if not lst:
            return []
        n = len(lst)
        start = max(start + n if start < 0 else start, 0)
        stop = min(stop + n if stop < 0 else stop, n - 1)
        if start > stop:
            return []
        return lst[start : stop + 1]  # type: ignore[no-any-return]

    # -- sets -----------------------------------------------------------------------------
    def sadd(self, key: str, *members: str) -> int:
        s = self._typed(key, set, True)
        before = len(s)
        s.update(members)
        return len(s) - before

    def srem(self, key: str, *members: str) -> int:
        s = self._typed(key, set, False)
        if s is None:
            return 0
        before = len(s)
        s.difference_update(members)
        self._cleanup(key, s)
        return before - len(s)

    def smembers(self, key: str) -> list[str]:
        return list(self._typed(key, set, False) or ())

    def scard(self, key: str) -> int:
        return len(self._typed(key, set, False) or ())

    # -- sorted sets ------------------------------------------------------------------------
    def zadd(self, key: str, pairs: Iterable[tuple[float, str]]) -> int:
        z = self._typed(key, ZSet, True)
        added = 0
        for score, member in pairs:
            added += member not in z
            z[member] = score
        return added

    def zrem(self, key: str, *members: str) -> int:
        z = self._typed(key, ZSet, False)
        if z is None:
            return 0
        n = sum(z.pop(m, None) is not None for m in members)
        self._cleanup(key, z)
        return n

    def zpopmin(self, key: str) -> list[str]:
        z = self._typed(key, ZSet, False)
        popped = None if z is None else z.pop_min()
        if z is not None:
            self._cleanup(key, z)
        return [] if popped is None else [popped[0], score_text(popped[1])]

    def zcard(self, key: str) -> int:
        return len(self._typed(key, ZSet, False) or ())

    def zscore(self, key: str, member: str) -> float | None:
        z = self._typed(key, ZSet, False)
        return None if z is None else z.get(member)

    def zset(self, key: str) -> ZSet:
        return self._typed(key, ZSet, False) or ZSet()

    # -- streams ----------------------------------------------------------------------------
    def xadd(self, key: str, value: str, maxlen: int | None = None) -> str:
        """Append ``value`` under a new id (``*``); keep the newest ``maxlen`` entries.
        Wakes the key's subscribers (a blocked reader) with the new id."""
        stream = self._typed(key, Stream, True)
        ms = int((self.frozen if self.frozen is not None else self.clock()) * 1000)
        last_ms, last_seq = stream.last
        stream.last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        entry_id = f"{stream.last[0]}-{stream.last[1]}"
        stream.append((entry_id, value))
        if maxlen is not None and len(stream) > maxlen:
            del stream[: len(stream) - maxlen]
        self.publish(key, entry_id)
        return entry_id

    def xread(self, key: str, after: str, count: int) -> list[tuple[str, str]]:
        """Up to ``count`` entries with an id greater than ``after``."""
        stream = self._typed(key, Stream, False)
        if not stream:
            return []
        floor = stream_id(after)
        lo, hi = 0, len(stream)
        while lo < hi:  # entries are in id order: bisect for the first one past `after`
            mid = (lo + hi) // 2
            if stream_id(stream[mid][0]) <= floor:
                lo = mid + 1
            else:
                hi = mid
        return list(stream[lo : lo + count])

    # -- pub/sub ----------------------------------------------------------------------------
    def publish(self, channel: str, message: str) -> int:
        callbacks = list(self.subscribers.get(channel, ()))
        for callback in callbacks:
            callback(message)
        return len(callbacks)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self.subscribers.setdefault(channel, []).append(callback)

    def unsubscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        callbacks = self.subscribers.get(channel, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self.subscribers.pop(channel, None)
