"""Calls for one key made while an earlier one is in flight go out together.

A group commit, as databases do for their log: the first call for a key goes out at once;
the calls made for that key while it is in flight wait for it and then go out as one
batch (at most ``most`` per batch), and so on until none is waiting. An idle key costs
nothing and a lone call waits for nothing; under load, what a call costs in itself (a
round trip, the script's set-up) is shared by the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")

Send = Callable[[str, Sequence[A]], Awaitable[Sequence[R]]]
_Key = tuple[asyncio.AbstractEventLoop, str]


class Coalescer(Generic[A, R]):
    """``await coalescer(key, item)`` runs ``send(key, [item, ...])`` and returns this
    item's reply. ``send`` must return one reply per item, in order. If a batch of
    several fails with an error not in ``shared``, each of its items is sent again alone,
    so one bad item fails only its own call; an error in ``shared`` (the store is
    unreachable) is every item's."""

    def __init__(
        self, send: Send[A, R], *, most: int = 64, shared: tuple[type[BaseException], ...] = ()
    ) -> None:
        self._send = send
        self._most = most
        self._shared = shared
        # Keyed by event loop too: a loop closed mid-call leaves its key behind, and a
        # call on another loop must not wait for what that loop will never send.
        self._waiting: dict[_Key, list[tuple[A, asyncio.Future[R]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()

    async def __call__(self, key: str, item: A) -> R:
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get((loop, key))
        if waiting is not None:
            future: asyncio.Future[R] = loop.create_future()
            waiting.append((item, future))
            return await future
        self._waiting[loop, key] = []
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
        if self._waiting[loop, key] and not loop.is_closed():
            task = loop.create_task(self._drain(loop, key))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:  # nothing waits, or a closed loop's call is being collected: nothing can
            del self._waiting[loop, key]

    async def _drain(self, loop: asyncio.AbstractEventLoop, key: str) -> None:
        waiting = self._waiting[loop, key]
        try:
            while waiting:
                batch = waiting[: self._most]
                del waiting[: self._most]
                await self._settle(key, batch)
        finally:
            del self._waiting[loop, key]
            for _, future in waiting:  # only when cancelled: nothing will send these
                future.cancel()

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
