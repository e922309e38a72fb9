"""The :class:`Mageflow` instance: task registry, backend, store, and the workflow API."""

from __future__ import annotations

import functools
import inspect
import logging
import typing
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel

from mageflow.backend.base import JSON, RunContext, TaskBackend, TaskDefinition
from mageflow.engine import Engine, split_key
from mageflow.errors import (
    ConfigurationError,
    InvalidOptionsError,
    InvalidTaskError,
    TaskAlreadyRegisteredError,
    TaskNotRegisteredError,
)
from mageflow.flows import identifiers as idents
from mageflow.flows import reconcile
from mageflow.flows.build import (
    TaskLike,
)
from mageflow.flows.constructors import WorkflowConstructors
from mageflow.flows.delivery import engine_delivery
from mageflow.flows.handles import (
    Signature,
    handle_for,
)
from mageflow.flows.inspect import read_def
from mageflow.flows.stats import read_stats
from mageflow.flows.sweeps import LoopSweeps
from mageflow.flows.tasks import RegisteredTask, fail_unregistered, run_task
from mageflow.models.options import Options, check_queue
from mageflow.models.retry import Backoff, retry_policy
from mageflow.models.signatures import check_name
from mageflow.models.stats import Stats
from mageflow.plugins.manager import backend_for_native, load_backend_class
from mageflow.plugins.settings import MageflowSettings
from mageflow.store.base import StateStore
from mageflow.store.connect import CLUSTER_CLIENT_REFUSED
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import RedisStore

log = logging.getLogger("mageflow")

FnT = TypeVar("FnT", bound=Callable[..., Any])

DeliveryTap = Callable[[JSON, RunContext], Awaitable[None]]
"""Awaited with each delivery's payload and run context: see :meth:`Mageflow.tap_deliveries`."""

_default: Mageflow | None = None

_UNSHARED_STORE = (
    "the {backend} backend runs tasks in worker processes, which cannot see this process's "
    "in-memory store (workers would skip every task and callers would wait forever): set "
    "MAGEFLOW_REDIS_URL=redis://host:6379/0, or pass redis_url=, so that clients and workers "
    "share one Redis store"
)


def input_model_of(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model ``fn``'s first parameter is annotated with, else ``None``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return None
    if not params:
        return None
    hint = hints.get(params[0].name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


def with_store_url(
    cls: type[TaskBackend], options: dict[str, Any], url: aioredis.Redis | str | None
) -> dict[str, Any]:
    """``options`` plus the store's Redis URL under ``cls.store_url_option``, for a
    backend that asks for it (``None``: the store is in memory or given as a client or
    ``store=``). An option of that name the caller gave wins."""
    if cls.store_url_option is None:
        return options
    return {cls.store_url_option: url if isinstance(url, str) else None, **options}


def default_instance() -> Mageflow:
    """The first :class:`Mageflow` created in this process, else one from the environment."""
    global _default
    if _default is None:
        Mageflow()
    assert _default is not None
    return _default


class Mageflow(WorkflowConstructors):
    """One MageFlow application: a backend, a store and the tasks registered on it.

    ``Mageflow()`` reads ``MAGEFLOW_BACKEND`` / ``MAGEFLOW_REDIS_URL``; ``backend=`` and
    ``redis_url=`` override them; native objects may be passed positionally (a Hatchet
    client or taskiq broker selects its backend; a redis client or URL is the store).
    Other keyword arguments go to the backend (``broker=``, ``hatchet=`` ...).

    Without a Redis URL the store is in memory, which only works when tasks run in this
    process: with a backend whose workers are other processes (taskiq, hatchet) the first
    use of the store (building or loading a workflow, ``run_worker``) raises
    :class:`ConfigurationError` naming ``MAGEFLOW_REDIS_URL``. An explicit ``store=`` is
    taken as given (a test harness that runs its workers in this process).
    """

    def __init__(
        self,
        *native: Any,
        backend: str | TaskBackend | None = None,
        redis_url: str | None = None,
        store: StateStore | None = None,
        key_prefix: str | None = None,
        resend_after: float | None = None,
        lease: float | None = None,
        **backend_options: Any,
    ) -> None:
        global _default
        settings = MageflowSettings()
        redis_client: aioredis.Redis | str | None = redis_url
        for obj in native:
            if isinstance(obj, aioredis.Redis) or (
                isinstance(obj, str)
                and obj.startswith(
                    ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
                )
            ):
                redis_client = obj
            elif isinstance(obj, aioredis.RedisCluster):
                raise ConfigurationError(CLUSTER_CLIENT_REFUSED)
            else:
                spec = backend_for_native(obj)
                if spec is None:
                    raise ConfigurationError(
                        f"no installed backend accepts a {type(obj).__module__}."
                        f"{type(obj).__name__}; pass backend= explicitly"
                    )
                backend = backend or spec.name
                backend_options.setdefault(spec.native_option, obj)
        defaulted: StateStore | None = None
        store_url: aioredis.Redis | str | None = None  # what the store was built from
        if store is None:
            redis_client = redis_client or settings.redis_url
            if redis_client is None or redis_client == "memory://":
                store = defaulted = MemoryStore(
                    prefix=key_prefix or settings.key_prefix,
                    active_ttl=settings.active_ttl,
                    finished_ttl=settings.finished_ttl,
                )
            else:
                store_url = redis_client
                store = RedisStore(
                    redis_client,
                    prefix=key_prefix or settings.key_prefix,
                    active_ttl=settings.active_ttl,
                    finished_ttl=settings.finished_ttl,
                )
        self.resend_after = settings.resend_after if resend_after is None else resend_after
        if lease is not None and not lease > 0:
            raise ConfigurationError(f"lease must be a positive number of seconds, not {lease!r}")
        self.lease = settings.lease if lease is None else lease
        """Seconds a running attempt holds its task between renewals (``lease=`` or
        ``MAGEFLOW_LEASE``): a copy of its run waits that long after its worker died."""
        self._store: StateStore = store
        self._defaulted_store = defaulted
        self._engine = Engine(
            store,
            resend_after=self.resend_after,
            packed_state=settings.packed_state,
            finish_linger=settings.finish_linger,
        )
        self._sweeps = LoopSweeps(self)
        self._engine.on_wake = self._sweeps.wake
        if isinstance(backend, TaskBackend):
            if backend_options:
                raise ConfigurationError(
                    f"options {sorted(backend_options)} given with a backend instance; "
                    "configure the backend object instead"
                )
            self.backend = backend
        else:
            cls = load_backend_class(backend or settings.backend)
            self.backend = cls.from_options(with_store_url(cls, backend_options, store_url))
        self.backend.use_key_prefix(self._store.prefix)
        self._engine.delivery = engine_delivery(self.backend, self._store)
        self.backend.on_worker_start(self.start_reconciler)
        self.backend.register_fallback(self._handle_unregistered)
        self.tasks: dict[str, RegisteredTask] = {}
        self._handles: dict[str, weakref.WeakSet[Signature]] = {}
        self._started = False
        if _default is None:
            _default = self

    # -- registration -------------------------------------------------------------------
    def task(
        self,
        name: str | None = None,
        *,
        input_validator: type[BaseModel] | None = None,
        retries: int = 0,
        timeout: float | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        backoff: Backoff | float | None = None,
        queue: str | None = None,
    ) -> Callable[[FnT], FnT]:
        """Register a function (async or sync) as a task runnable by name on any worker.

        It receives a validated ``input_validator`` model (by default the pydantic model
        its first parameter is annotated with), or a dict without one. ``retries`` extra
        attempts are made on failure; error callbacks fire after the last. ``backoff`` (a
        :class:`~mageflow.Backoff`, or seconds for a constant delay) is the wait before each
        retry; without it a retry starts at once. ``priority`` (0..9) and ``delay`` (s) are
        the defaults of its signatures (see :class:`~mageflow.Options`), and so is
        ``queue``: only workers serving that queue run it (``mageflow worker app:mf
        --queues gpu``).

        :raises InvalidRetryPolicyError: ``retries`` or ``backoff`` is invalid.
        """
        policy = retry_policy(retries, backoff)
        defaults = Options(priority=priority, delay=delay, queue=queue)

        def decorate(fn: FnT) -> FnT:
            task_name = check_name(name or fn.__name__, "a task name")
            existing = self.tasks.get(task_name)
            if existing is not None and existing.fn is not fn:
                raise TaskAlreadyRegisteredError(
                    f"task name {task_name!r} is already registered to {existing.fn!r}; "
                    "choose another name"
                )
            model = input_validator or input_model_of(fn)
            registered = RegisteredTask(
                task_name, fn, model, retries, timeout, defaults, backoff=policy
            )
            self.tasks[task_name] = registered
            self.backend.register(self._definition(registered))
            fn.__mageflow_task__ = task_name  # type: ignore[attr-defined]
            return fn

        return decorate

    @property
    def store(self) -> StateStore:
        """Where workflow state lives. Raises :class:`ConfigurationError` when it is the
        in-memory default and the backend's workers are other processes."""
        self._refuse_unshared_store()
        return self._store

    @property
    def engine(self) -> Engine:
        """The engine running transitions on :attr:`store` (refused like the store)."""
        self._refuse_unshared_store()
        return self._engine

    def _refuse_unshared_store(self) -> None:
        if self._store is self._defaulted_store and self.backend.capabilities.remote_workers:
            raise ConfigurationError(_UNSHARED_STORE.format(backend=self.backend.name))

    def use(
        self, backend: TaskBackend | None = None, store: StateStore | None = None
    ) -> tuple[TaskBackend, StateStore]:
        """Swap the backend and/or the store (e.g. for tests), re-registering every task on
        the new backend. Returns the previous ``(backend, store)``."""
        previous = (self.backend, self._store)
        if store is not None:
            self._store = store
            self._engine = Engine(
                store,
                resend_after=self.resend_after,
                packed_state=self._engine.packed_state,
                finish_linger=self._engine.finish_linger,
            )
            self._engine.on_wake = self._sweeps.wake
        if backend is not None:
            self.backend = backend
            self._started = False
            backend.use_key_prefix(self._store.prefix)
            backend.on_worker_start(self.start_reconciler)
            backend.register_fallback(self._handle_unregistered)
            for registered in self.tasks.values():
                backend.register(self._definition(registered))
        self._engine.delivery = engine_delivery(self.backend, self._store)
        return previous

    def _definition(self, registered: RegisteredTask) -> TaskDefinition:
        return TaskDefinition(
            name=registered.name,
            handler=functools.partial(self._handle, registered),
            retries=registered.retries,
            timeout=registered.timeout,
            input_model=registered.input_model,
            backoff=registered.backoff,
        )

    _taps: tuple[DeliveryTap, ...] = ()

    def tap_deliveries(self, tap: DeliveryTap) -> None:
        """Await ``tap(payload, ctx)`` first at every delivery the backend hands this
        instance, exactly as the adapter reported it (duplicates and redeliveries the
        engine skips included). The contract suite's probe counts attempts with it; an
        exception from ``tap`` fails the delivery like one from the task."""
        self._taps = (*self._taps, tap)

    async def _handle(self, task: RegisteredTask, payload: Any, ctx: RunContext) -> Any:
        for tap in self._taps:
            await tap(payload, ctx)
        await self.ensure_started()
        return await run_task(self, task, payload, ctx)

    async def _handle_unregistered(self, payload: Any, ctx: RunContext) -> None:
        for tap in self._taps:
            await tap(payload, ctx)
        await self.ensure_started()
        await fail_unregistered(self, payload, ctx)

    def task_name_of(self, value: TaskLike) -> str:
        name = value if isinstance(value, str) else getattr(value, "__mageflow_task__", None)
        if not isinstance(name, str):
            raise InvalidTaskError(
                f"expected a signature, a @mf.task function or a task name, got {value!r}"
            )
        check_name(name, "a task name")
        if name not in self.tasks:
            raise TaskNotRegisteredError(name, self.tasks)
        return name

    # -- loading and finding workflows (built by WorkflowConstructors) ----------------------
    async def load(self, key: str) -> Signature:
        """The signature, chain or swarm stored under ``key``."""
        d = await read_def(self, key)
        return handle_for(self, key, d.kind)

    async def find_by_identifiers(
        self, identifiers: dict[str, Any], *, limit: int = 100
    ) -> list[str]:
        """Keys of the signatures whose ``task_identifiers`` contain every given pair,
        newest first (at most ``limit``); ``mageflow.load(key)`` opens one. Values match
        by their text (``1`` finds ``"1"``). Uses the identifier index, never scans
        workflows. Raises :class:`InvalidIdentifiersError` for no or malformed pairs."""
        return await idents.find(self.store, identifiers, limit)

    async def stats(self, window: float | timedelta = 900) -> Stats:
        """Per task name: attempts started, retried, done, failed, mean and p95 duration;
        top-level workflows started / done / failed / canceled; over the last ``window``
        (seconds or a timedelta, whole minutes, at most an hour). Kept by the transitions
        in per-minute buckets: reading costs one hash per minute, never a scan."""
        seconds = window.total_seconds() if isinstance(window, timedelta) else window
        return await read_stats(self.store, seconds)

    # -- handles ---------------------------------------------------------------------------
    def track(self, handle: Signature) -> None:
        """Remember a live handle so that moving its workflow can update its key."""
        wf, _ = split_key(handle.key)
        self._handles.setdefault(wf, weakref.WeakSet()).add(handle)

    def rehome(self, old_wf: str, new_key: Callable[[str], str]) -> None:
        """Point every live handle of ``old_wf`` at its new key (``new_key(old_sid)``)."""
        for handle in list(self._handles.pop(old_wf, ())):
            _, sid = split_key(handle.key)
            handle.key = new_key(sid)
            self.track(handle)

    # -- transport ------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        """Start the backend once; a start that failed is tried again on the next call."""
        if not self._started:
            self._started = True
            try:
                await self.backend.startup()
            except BaseException:
                self._started = False
                raise

    def start_reconciler(self) -> None:
        """Run the reconciler sweep on this event loop (once per loop; workers call it)."""
        self._sweeps.start()

    async def reconcile(self) -> int:
        """Re-send, once, whatever is due: dispatched and never started. Returns how many
        tasks were re-sent (``mageflow reconcile`` runs this)."""
        return await reconcile.sweep_due(self)

    def run_worker(
        self, *, concurrency: int | None = None, queues: Sequence[str] | None = None
    ) -> None:
        """Serve this instance's tasks until interrupted (blocking): only those routed to
        ``queues`` when given (``"default"`` names the tasks given no queue). Raises
        :class:`ConfigurationError` when the workers could not share the store,
        :class:`InvalidOptionsError` for a bad queue name and
        :class:`CapabilityNotSupportedError` when the backend cannot route."""
        self._refuse_unshared_store()
        if queues is not None:
            if not queues:
                raise InvalidOptionsError("give at least one queue to serve, e.g. default")
            self.backend.serve_queues([check_queue(q) for q in queues])
        self.backend.run_worker(concurrency=concurrency)

    async def aclose(self) -> None:
        """Let the backend drain, then stop this loop's reconciler and close the store.
        (Each task the drain runs would start the reconciler again: while closing it
        cannot restart, and it is awaited once the drain is over.)"""
        try:
            await self._sweeps.close_around(self.backend.shutdown)
            await self._store.close()
        finally:
            self._started = False
