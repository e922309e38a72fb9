"""Calls for one key made while an earlier one is in flight go out together.

A group commit, as databases do for their log: the first call for a key goes out at once;
the calls made for that key while it is in flight wait for it and then go out as one
batch (at most ``most`` per batch), and so on until none is waiting. An idle key costs
nothing and a lone call waits for nothing; under load, what a call costs in itself (a
round trip, the script's set-up) is shared by the batch.

With ``linger`` (s), such a batch (calls that came while another was in flight: proof
that this key's calls come concurrently) also waits for more, like Kafka's
``linger.ms``: while they keep coming (each within a fifth of ``linger`` of the one
before), until it is full or its oldest call waited ``linger``. A call that came alone still
goes out at once: a chain's steps, whose next call cannot come before this one's reply,
never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")

Send = Callable[[str, Sequence[A]], Awaitable[Sequence[R]]]
_Key = tuple[asyncio.AbstractEventLoop, str]


class _Waiting(Generic[A, R]):
    """The calls for one key waiting for the one in flight, oldest first."""

    __slots__ = ("calls", "first", "full", "latest")

    def __init__(self) -> None:
        self.calls: list[tuple[A, asyncio.Future[R]]] = []
        self.first = 0.0
        """When the oldest waiting call came (loop time)."""
        self.latest = 0.0
        """When the newest came."""
        self.full: asyncio.Future[None] | None = None
        """Set once the lingering batch holds ``most`` calls."""


class Coalescer(Generic[A, R]):
    """``await coalescer(key, item)`` runs ``send(key, [item, ...])`` and returns this
    item's reply. ``send`` must return one reply per item, in order. If a batch of
    several fails with an error not in ``shared``, each of its items is sent again alone,
    so one bad item fails only its own call; an error in ``shared`` (the store is
    unreachable) is every item's."""

    def __init__(
        self,
        send: Send[A, R],
        *,
        most: int = 64,
        shared: tuple[type[BaseException], ...] = (),
        linger: float = 0.0,
    ) -> None:
        self._send = send
        self._most = most
        self._shared = shared
        self._linger = linger
        # Keyed by event loop too: a loop closed mid-call leaves its key behind, and a
        # call on another loop must not wait for what that loop will never send.
        self._waiting: dict[_Key, _Waiting[A, R]] = {}
        self._drains: set[asyncio.Task[None]] = set()

    async def __call__(self, key: str, item: A) -> R:
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get((loop, key))
        if waiting is not None:
            future: asyncio.Future[R] = loop.create_future()
            waiting.latest = loop.time()
            if not waiting.calls:
                waiting.first = waiting.latest
            waiting.calls.append((item, future))
            full = waiting.full
            if full is not None and len(waiting.calls) >= self._most and not full.done():
                full.set_result(None)
            return await future
        self._waiting[loop, key] = _Waiting()
        try:
            return (await self._replies(key, [item]))[0]
        finally:
            self._hand_off(loop, key)

    async def _replies(self, key: str, items: list[A]) -> Sequence[R]:
        replies = await self._send(key, items)
        if len(replies) != len(items):
            raise RuntimeError(f"{key}: {len(replies)} replies to {len(items)} calls")
        return replies

    def _hand_off(self, loop: asyncio.AbstractEventLoop, key: str) -> None:
        if self._waiting[loop, key].calls and not loop.is_closed():
            task = loop.create_task(self._drain(loop, key))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:  # nothing waits, or a closed loop's call is being collected: nothing can
            del self._waiting[loop, key]

    async def _drain(self, loop: asyncio.AbstractEventLoop, key: str) -> None:
        waiting = self._waiting[loop, key]
        try:
            while waiting.calls:
                if self._linger > 0:
                    await self._linger_for_more(loop, waiting)
                batch = waiting.calls[: self._most]
                del waiting.calls[: self._most]
                if waiting.calls:  # the rest came after the batch's calls: no earlier
                    waiting.first = loop.time()
                await self._settle(key, batch)
        finally:
            del self._waiting[loop, key]
            for _, future in waiting.calls:  # only when cancelled: nothing will send these
                future.cancel()

    async def _linger_for_more(
        self, loop: asyncio.AbstractEventLoop, waiting: _Waiting[A, R]
    ) -> None:
        """Wait while calls keep coming: until none came for a fifth of ``linger``, the
        batch is full, or its oldest call waited ``linger``."""
        last = waiting.first + self._linger
        gap = self._linger / 5
        while len(waiting.calls) < self._most:
            wake = min(waiting.latest + gap, last)
            if wake <= loop.time():
                return
            full = waiting.full = loop.create_future()
            alarm = loop.call_at(wake, _set, full)
            try:
                await full
            finally:
                alarm.cancel()
                waiting.full = None

    async def _settle(self, key: str, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            replies = await self._replies(key, [item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, self._shared):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for one in batch:
                await self._settle(key, [one])
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
