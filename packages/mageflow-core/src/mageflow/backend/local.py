"""The built-in ``local`` backend: an in-process asyncio task manager.

It is a real backend, not a mock: published tasks go through a queue, ``workers``
independent worker loops each run up to ``concurrency`` tasks at once, failures are
retried with the attempt number reported, running tasks can be cancelled, and a worker
that dies holding a message (see :class:`mageflow.faults.SimulatedCrash`) has that
message redelivered. It is the embedded default and the reference for adapter authors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mageflow.backend.base import (
    Capabilities,
    OutgoingTask,
    RunContext,
    TaskBackend,
    TaskDefinition,
    TaskHandler,
    serve_in_context,
)
from mageflow.errors import ConfigurationError, NonRetryableError, TaskNotRegisteredError
from mageflow.faults import SimulatedCrash
from mageflow.models.options import DEFAULT_QUEUE, check_queue

log = logging.getLogger("mageflow.local")


@dataclass
class _Message:
    task: OutgoingTask
    run_id: str
    attempt: int = 1


class LocalBackend(TaskBackend):
    """In-process backend. ``workers`` worker loops, ``concurrency`` slots each.

    A failed attempt is retried after its task's ``backoff``; ``retry_delay`` is the
    constant delay of tasks registered without one (default 0: at once).

    Routing: the ``workers`` loops serve the ``default`` queue (or the queues given to
    :meth:`serve_queues`, a pool of ``workers`` loops each); ``pools`` adds a separate
    pool per queue (``{"gpu": 1}``: one more loop, serving only tasks routed to
    ``gpu``). A task routed to a queue without a pool stays queued."""

    name = "local"
    capabilities = Capabilities(
        cancel_running=True,
        priorities=False,
        delayed_start=False,
        remote_workers=False,
        routing=True,
    )
    accepted_options = ("workers", "concurrency", "retry_delay", "pools")

    def __init__(
        self,
        *,
        workers: int = 1,
        concurrency: int = 100,
        retry_delay: float = 0.0,
        pools: Mapping[str, int] | None = None,
    ):
        if workers < 1 or concurrency < 1 or any(n < 1 for n in (pools or {}).values()):
            raise ConfigurationError("local backend needs workers >= 1 and concurrency >= 1")
        if retry_delay < 0:
            raise ConfigurationError(f"retry_delay= must be >= 0 seconds, got {retry_delay}")
        self.workers = workers
        self.concurrency = concurrency
        self.retry_delay = retry_delay
        self.pools = {
            DEFAULT_QUEUE: workers,
            **{check_queue(q): n for q, n in (pools or {}).items()},
        }
        self.definitions: dict[str, TaskDefinition] = {}
        self._fallback: TaskHandler | None = None
        self._queue: asyncio.Queue[_Message] | None = None
        self._queues: dict[str, asyncio.Queue[_Message]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def register(self, definition: TaskDefinition) -> None:
        self.definitions[definition.name] = definition

    async def startup(self) -> None:
        self._ensure_workers()

    def register_fallback(self, handler: TaskHandler) -> None:
        self._fallback = handler

    def serve_queues(self, queues: Sequence[str]) -> None:
        super().serve_queues(queues)
        extra = {q: n for q, n in self.pools.items() if q not in queues and q != DEFAULT_QUEUE}
        self.pools = {**{q: self.workers for q in queues}, **extra}

    def _ensure_workers(self) -> asyncio.Queue[_Message]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue = asyncio.Queue()
            self._queues = {DEFAULT_QUEUE: self._queue}
            self._loop = loop
            self._outstanding = 0
            self._idle = asyncio.Event()
            self._idle.set()
            self._loops = [
                loop.create_task(self._worker(i, queue), name=f"mageflow-local-{queue}-{i}")
                for queue, n in self.pools.items()
                for i in range(n)
            ]
            self.worker_started()
        return self._queue

    def _queue_of(self, message: _Message) -> asyncio.Queue[_Message]:
        """The queue ``message`` is routed to (created on first use: it holds the
        messages of a queue no pool serves)."""
        self._ensure_workers()
        name = message.task.queue or DEFAULT_QUEUE
        return self._queues.setdefault(name, asyncio.Queue())

    def _counted(self, message: _Message) -> bool:
        """Whether ``message`` is served here (:meth:`join` waits only for those)."""
        return (message.task.queue or DEFAULT_QUEUE) in self.pools

    async def publish(self, task: OutgoingTask) -> str:
        # With a fallback, an unknown name is delivered like any task and fails its node
        # on the worker; raising here would leave a step published by a worker pending.
        if task.task_name not in self.definitions and self._fallback is None:
            raise TaskNotRegisteredError(task.task_name, self.definitions)
        message = _Message(task, run_id=uuid.uuid4().hex)
        if self._counted(message):
            self._outstanding += 1
            self._idle.clear()
        self._queue_of(message).put_nowait(message)  # the engine holds delays itself
        return message.run_id

    async def redeliver(self, run_id: str, task: OutgoingTask, attempt: int = 1) -> None:
        """Deliver a message again under the same run id, as a broker does after a worker
        died holding it (for tests of duplicate deliveries)."""
        message = _Message(task, run_id, attempt)
        if self._counted(message):
            self._outstanding += 1
            self._idle.clear()
        self._queue_of(message).put_nowait(message)

    async def _worker(self, index: int, queue: str) -> None:
        serve_in_context([queue])  # what serving_queues() tells the tasks it runs
        source = self._queues.setdefault(queue, asyncio.Queue())
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await slots.acquire()
            message = await source.get()
            job = asyncio.create_task(self._execute(message))
            self._inflight.add(job)
            job.add_done_callback(self._inflight.discard)
            job.add_done_callback(lambda _t: slots.release())

    async def _execute(self, message: _Message) -> None:
        assert self._queue is not None
        definition = self.definitions.get(message.task.task_name)
        handler = definition.handler if definition else self._fallback
        assert handler is not None  # publish refuses unknown names without a fallback
        ctx = RunContext(
            task_name=message.task.task_name,
            run_id=message.run_id,
            attempt=message.attempt,
            is_final_attempt=message.attempt > (definition.retries if definition else 0),
            headers=dict(message.task.headers),
        )
        call = asyncio.ensure_future(handler(message.task.payload, ctx))
        self._running[message.run_id] = call
        try:
            await call
        except SimulatedCrash:
            log.warning("worker died holding %s; redelivering", message.run_id)
            self._queue_of(message).put_nowait(message)
            return
        except asyncio.CancelledError:
            if not call.cancelled():
                raise
            log.info("run %s cancelled", message.run_id)
        except NonRetryableError as exc:
            log.info("run %s failed for good: %s", message.run_id, exc)
        except Exception as exc:
            if ctx.is_final_attempt:
                log.info("run %s failed on its final attempt: %r", message.run_id, exc)
            else:
                assert definition is not None  # the fallback's runs are always final
                self._retry_later(message, definition)
                return
        finally:
            self._running.pop(message.run_id, None)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def _retry_later(self, message: _Message, definition: TaskDefinition) -> None:
        """Queue the next attempt once the task's backoff has passed. The slot is freed at
        once: the wait is a timer, not a sleeping task."""
        assert self._queue is not None and self._loop is not None
        delay = definition.retry_delay(message.attempt)
        if definition.backoff is None:
            delay = self.retry_delay
        message.attempt += 1
        queue = self._queue_of(message)
        if delay <= 0:
            queue.put_nowait(message)
            return

        def due() -> None:
            self._timers.discard(timer)
            queue.put_nowait(message)

        timer = self._loop.call_later(delay, due)
        self._timers.add(timer)

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every published task, and everything they published, has finished
        (used by tests to assert after callbacks ran).

        :raises TimeoutError: work is still outstanding after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"tasks still outstanding after {timeout} s") from None

    async def cancel(self, run_ids: Any) -> None:
        for run_id in run_ids:
            call = self._running.get(run_id)
            if call is not None:
                job = asyncio.create_task(self._cancel_until_done(call))
                self._inflight.add(job)
                job.add_done_callback(self._inflight.discard)

    @staticmethod
    async def _cancel_until_done(call: asyncio.Future[Any]) -> None:
        """Cancel again until the run stops: on Python < 3.12 a cancellation can be
        swallowed by ``asyncio.wait_for`` inside a client library (redis-py does)."""
        for _ in range(500):
            if call.done():
                return
            call.cancel()
            await asyncio.sleep(0.01)

    def run_worker(self, *, concurrency: int | None = None) -> None:
        if concurrency:
            self.concurrency = concurrency

        async def serve() -> None:
            self._ensure_workers()
            await asyncio.Event().wait()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())

    async def shutdown(self, drain_timeout: float = 5.0) -> None:
        """Let queued and running tasks finish (up to ``drain_timeout`` s), then stop."""
        if self._loop is asyncio.get_running_loop():
            with contextlib.suppress(TimeoutError):
                await self.join(drain_timeout)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for job in [*self._loops, *self._inflight]:
            job.cancel()
        await asyncio.gather(*self._loops, *self._inflight, return_exceptions=True)
        self._loops = []
        self._queue = None
        self._queues = {}
        self._loop = None
        self._outstanding = 0
        self._idle.set()

    def describe(self) -> Mapping[str, str]:
        return {"workers": str(self.workers), "concurrency": str(self.concurrency)}
