"""The reconciler sweep of each event loop an application runs on: started once per loop
(the first delivery or run starts it), woken early by a transition that delayed a node,
and stopped when the application closes."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

from mageflow.flows import reconcile, workers
from mageflow.flows.runtime import Runtime


class LoopSweeps:
    """One sweep task (with this worker's heartbeat) per event loop, for ``rt``."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._running: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Event, reconcile.Alarm]
        ] = weakref.WeakKeyDictionary()
        self.closing = False
        """While set (the application drains its backend) no sweep starts."""

    def start(self) -> None:
        """Run the sweep on this event loop, unless it runs already or we are closing."""
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        running = self._running.get(loop)
        if running is None or running[0].done():
            stop = asyncio.Event()
            alarm = reconcile.Alarm()
            task = loop.create_task(
                workers.with_heartbeat(
                    self._rt, stop, lambda: reconcile.run_until(self._rt, stop, alarm)
                ),
                name="mageflow-reconciler",
            )
            self._running[loop] = (task, stop, alarm)

    def wake(self, at_ms: int) -> None:
        """Make this loop's sweep run at ``at_ms`` (ms) at the latest."""
        try:
            running = self._running.get(asyncio.get_running_loop())
        except RuntimeError:
            return
        if running is not None:
            running[2].set(at_ms)

    async def close_around(self, drain: Callable[[], Awaitable[None]]) -> None:
        """Stop this loop's sweep around ``drain`` (the backend's shutdown): no new sweep
        once it begins (the one under way may still publish what the drain's tasks
        need), then the sweep is cancelled and awaited."""
        self.closing = True
        try:
            running = self._running.pop(asyncio.get_running_loop(), None)
            if running is not None:
                running[1].set()
            await drain()
            if running is not None:
                task = running[0]
                while not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.05)
        finally:
            self.closing = False
