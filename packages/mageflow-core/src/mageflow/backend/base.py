"""The adapter contract: the whole surface a task manager adapter implements.

An adapter is thin transport. It registers the core's task wrapper under a task name,
publishes messages by name, tells the wrapper which attempt is running, and runs workers.
It never contains chain, swarm or callback logic: that lives in :mod:`mageflow.flows`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from mageflow.errors import CapabilityNotSupportedError, ConfigurationError
from mageflow.models.options import DEFAULT_QUEUE
from mageflow.models.retry import Backoff

JSON = Any
"""A value made of dicts, lists, str, int, float, bool and None only."""

HEADER_KEY = "mageflow-key"
"""Header carrying the signature key of the published task."""


@dataclass
class StreamEntry:
    """The delivery being run is entry ``entry_id`` of Redis stream ``stream``, read by
    consumer group ``group`` (see :attr:`RunContext.entry`)."""

    stream: str
    group: str
    entry_id: str
    acknowledged: bool = False
    """Set by the core once the transition that ended the run acknowledged (XACK) and
    deleted (XDEL) the entry: the adapter must then not acknowledge it again."""


@dataclass(frozen=True)
class RunContext:
    """What the running task knows about its delivery, filled in by the adapter."""

    task_name: str
    run_id: str
    """Identifies one logical run across retries and broker redeliveries of the same message."""
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    is_final_attempt: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    first_delivery: bool = False
    """The task manager delivers this message for the first time (not a redelivery, a
    reclaim from a dead worker, or a retry). Set it only where the task manager can tell
    for sure: with a message the engine appended itself (:class:`StreamDelivery`) the core
    then runs the user code at once and records the start with the finish, one store
    round trip instead of two."""
    entry: StreamEntry | None = None
    """The stream entry this delivery is, where the task manager delivers entries of Redis
    streams read by a consumer group (``None``: it does not, or cannot tell which entry).
    With stream delivery on (:class:`StreamDelivery`, so the stream is on the store's
    server) the core acknowledges and deletes the entry inside the transition that ends
    the run for good (its success or final failure, not a retried attempt), one round
    trip less, and sets :attr:`StreamEntry.acknowledged`; the adapter then skips its own
    acknowledgement."""


TaskHandler = Callable[[JSON, RunContext], Awaitable[JSON]]
"""The core's wrapper. Adapters call it with the published payload; it returns the JSON
result or raises. :class:`mageflow.errors.NonRetryableError` means: do not retry."""


@dataclass(frozen=True)
class TaskDefinition:
    """A task as the core hands it to :meth:`TaskBackend.register`."""

    name: str
    handler: TaskHandler
    retries: int = 0
    """Extra attempts after the first one fails."""
    timeout: float | None = None
    """Seconds a single attempt may run. The core enforces it around the user code (a
    timeout is an ordinary, retried failure); do not cancel the handler at this limit —
    set the task manager's own timeout above it, as a backstop for a hung worker."""
    input_model: type[BaseModel] | None = None
    """The user's input validator, for adapters that show or check input schemas."""
    backoff: Backoff | None = None
    """How long to wait before each retry (``None``: retry at once). Wait
    :meth:`retry_delay` after a failed attempt that is not the final one, without holding
    a worker slot, and keep the pending retry durable (in the broker or the task
    manager's engine) while it waits. An adapter whose task manager has a native backoff
    may map this onto it where the formulas agree."""

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one:
        :meth:`Backoff.delay` of retry ``attempt``, jitter included; 0 without a backoff."""
        return 0.0 if self.backoff is None else self.backoff.delay(attempt)


@dataclass(frozen=True)
class OutgoingTask:
    """One message to publish: a task name, a JSON payload and string headers."""

    task_name: str
    payload: JSON
    headers: Mapping[str, str]
    priority: int | None = None
    delay: float | None = None
    queue: str | None = None
    """Only workers serving this queue may run it (``None``: the default queue); see
    :meth:`TaskBackend.serve_queues`."""


@dataclass(frozen=True)
class Capabilities:
    """Optional features an adapter declares. The core degrades when one is missing.

    - ``cancel_running``: :meth:`TaskBackend.cancel` stops a task mid-run. Without it,
      ``interrupt`` behaves as ``suspend``: running tasks finish, nothing new starts.
    - ``priorities``: :attr:`OutgoingTask.priority` (0..9, higher first) is passed to the
      task manager's own priorities. Without it, only the engine orders by priority
      (a swarm's queue), which it does on every backend.
    - ``delayed_start``: :attr:`OutgoingTask.delay` (s) is honoured: the task must not
      start earlier. Without it, the engine holds delayed nodes itself and the
      reconciler releases them when due (the contract suite checks both).
    - ``remote_workers``: tasks run in worker processes other than the publisher's.
    - ``routing``: :attr:`OutgoingTask.queue` reaches only workers that serve it
      (:meth:`TaskBackend.serve_queues`). Without it, giving a worker queues is refused.
    """

    cancel_running: bool = False
    priorities: bool = False
    delayed_start: bool = False
    remote_workers: bool = True
    routing: bool = False


@dataclass(frozen=True)
class StreamDelivery:
    """An optional capability: the backend's messages are entries of Redis streams, and
    the engine may append them itself, inside the transition that dispatches a task (one
    atomic step: no publish round trip, and a caller that dies right after the transition
    loses nothing). The core uses it only when the store's Redis is the same server and
    database (:attr:`server`, as :func:`mageflow.store.redis.server_identity` names it);
    otherwise it publishes as usual.

    A message is a template: literal texts at even indices, hole names at odd ones, each
    hole being ``id`` (the run id as a JSON string), ``task`` (the task name as JSON),
    ``payload`` (the payload JSON object), ``key`` (the MageFlow key as a JSON string;
    the receiving worker must pass it as the :data:`HEADER_KEY` header) or ``stream``
    (the stream's name as a JSON string). Tasks of the default queue go to
    :attr:`default_stream` with :attr:`default_template`, a routed queue ``q`` to
    ``routed_prefix + q`` with :attr:`routed_template`."""

    server: str
    default_stream: str
    routed_prefix: str
    default_template: tuple[str, ...]
    routed_template: tuple[str, ...]
    entry_field: str = "data"
    maxlen: int | None = None


_SERVED: ContextVar[tuple[str, ...] | None] = ContextVar("mageflow_served", default=None)
_served_by_process: tuple[str, ...] = (DEFAULT_QUEUE,)


def serving_queues() -> tuple[str, ...]:
    """The queues the worker running the calling task serves (``("default",)`` unless
    it was given queues)."""
    return _SERVED.get() or _served_by_process


def serve_in_context(queues: Sequence[str]) -> None:
    """For in-process backends whose worker pools serve different queues: what
    :func:`serving_queues` answers in this context (and the tasks it starts)."""
    _SERVED.set(tuple(queues))


class TaskBackend(abc.ABC):
    """Base class of every backend. Implement :meth:`register`, :meth:`publish` and
    :meth:`run_worker`; the rest has working defaults."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    accepted_options: ClassVar[tuple[str, ...]] = ()
    """Keyword arguments of ``Mageflow(...)`` this backend takes (``broker``, ...)."""
    store_url_option: ClassVar[str | None] = None
    """Opt-in: the option under which :meth:`from_options` receives the store's Redis URL
    (the ``redis_url=`` given to ``Mageflow(...)``, a URL passed positionally, or
    ``MAGEFLOW_REDIS_URL``; ``None`` when the store is in memory, a client object or
    ``store=``), e.g. to default a Redis-based task manager to the store's Redis. List it
    in :attr:`accepted_options` too; a value the user passes under that name wins."""

    @abc.abstractmethod
    def register(self, definition: TaskDefinition) -> None:
        """Make ``definition.name`` runnable by this task manager's workers."""

    def register_fallback(self, handler: TaskHandler) -> None:
        """Run ``handler`` for a delivery whose task name no :meth:`register` call defined,
        with ``RunContext.task_name`` set to that name: the core then fails the workflow
        node with :class:`~mageflow.errors.TaskNotRegisteredError`. Implement it where the
        task manager hands such a message to a worker that would drop it (taskiq
        acknowledges and drops it). The default ignores the handler, which is right where
        the task manager keeps the message queued until a worker that serves the name
        appears (Hatchet)."""

    @abc.abstractmethod
    async def publish(self, task: OutgoingTask) -> str:
        """Send one task; return its run id. Must not wait for the task to run."""

    async def publish_many(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        """Send several tasks; override when the task manager has a bulk call."""
        return [await self.publish(task) for task in tasks]

    async def cancel(self, run_ids: Sequence[str]) -> None:
        """Stop running tasks. Only called when ``capabilities.cancel_running``."""
        raise CapabilityNotSupportedError(f"backend {self.name!r} cannot cancel running tasks")

    @abc.abstractmethod
    def run_worker(self, *, concurrency: int | None = None) -> None:
        """Serve the registered tasks until interrupted (blocking; used by the CLI)."""

    def serve_queues(self, queues: Sequence[str]) -> None:
        """Before :meth:`run_worker`: serve only the tasks routed to ``queues``
        (``"default"``: tasks published without a queue). Backends with
        ``capabilities.routing`` override it to configure their transport, then call
        ``super().serve_queues(queues)``. Raises :class:`CapabilityNotSupportedError`
        without that capability."""
        global _served_by_process
        if not self.capabilities.routing:
            raise CapabilityNotSupportedError(
                f"backend {self.name!r} cannot route tasks to queues; run its workers "
                "without --queues"
            )
        _served_by_process = tuple(queues)

    def use_key_prefix(self, prefix: str) -> None:
        """Told the application's store key prefix once it is built: a backend whose
        queues are shared by every app on one server derives its queue names from it, so
        apps with different prefixes never take each other's messages. Default: nothing."""

    def stream_delivery(self) -> StreamDelivery | None:
        """The backend's messages as Redis stream entries the engine can append itself
        (see :class:`StreamDelivery`); ``None`` (the default): the core publishes."""
        return None

    def on_worker_start(self, hook: Callable[[], None]) -> None:
        """The core registers what a worker must also run (the reconciler)."""
        self._worker_hooks = [*getattr(self, "_worker_hooks", ()), hook]

    def worker_started(self) -> None:
        """Call from inside the worker's event loop once it serves tasks: the core starts
        its background duties there. (The core also starts them at the first task a
        worker handles, so an adapter that never calls this still works, only later.)"""
        for hook in getattr(self, "_worker_hooks", ()):
            hook()

    async def startup(self) -> None:
        """Open connections before the first publish. Called once, lazily."""

    async def shutdown(self) -> None:
        """Release what :meth:`startup` opened."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TaskBackend:
        """Build the backend from the extra keyword arguments given to ``Mageflow(...)``
        (e.g. ``broker=`` or ``hatchet=``) and the environment. Unknown options must raise
        :class:`mageflow.errors.ConfigurationError`."""
        cls.check_options(options)
        return cls(**options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigurationError` naming unknown options and the accepted ones."""
        unknown = sorted(set(options) - set(cls.accepted_options))
        if unknown:
            accepted = ", ".join(o + "=" for o in cls.accepted_options) or "none"
            raise ConfigurationError(
                f"unknown option(s) for the {cls.name} backend: {', '.join(unknown)}; "
                f"accepted: {accepted}"
            )

    def describe(self) -> Mapping[str, str]:
        """Short settings summary for ``mageflow backends`` and error messages."""
        return {}
