"""The :class:`Mageflow` instance: task registry, backend, store, and the workflow API."""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel

from mageflow.backend.base import RunContext, TaskBackend, TaskDefinition
from mageflow.engine import ROOT, Engine, split_key
from mageflow.engine import fields as F
from mageflow.errors import ConfigurationError, TaskAlreadyRegisteredError, TaskNotRegisteredError
from mageflow.flows import reconcile
from mageflow.flows.build import (
    TaskLike,
    WorkflowBuilder,
    callbacks_of,
    new_workflow_id,
    unique_item_ids,
)
from mageflow.flows.handles import ChainSignature, Signature, SwarmSignature, handle_for
from mageflow.flows.inspect import read_def
from mageflow.flows.tasks import RegisteredTask, fail_unregistered, run_task
from mageflow.models.config import SwarmConfig
from mageflow.models.signatures import NodeDef
from mageflow.plugins.manager import backend_for_native, load_backend_class
from mageflow.plugins.settings import MageflowSettings
from mageflow.store.base import StateStore
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import RedisStore

log = logging.getLogger("mageflow")

FnT = TypeVar("FnT", bound=Callable[..., Any])

_default: Mageflow | None = None

_UNSHARED_STORE = (
    "the {backend} backend runs tasks in worker processes, which cannot see this process's "
    "in-memory store (workers would skip every task and callers would wait forever): set "
    "MAGEFLOW_REDIS_URL=redis://host:6379/0, or pass redis_url=, so that clients and workers "
    "share one Redis store"
)


def default_instance() -> Mageflow:
    """The first :class:`Mageflow` created in this process, else one from the environment."""
    global _default
    if _default is None:
        Mageflow()
    assert _default is not None
    return _default


class Mageflow:
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
        **backend_options: Any,
    ) -> None:
        global _default
        settings = MageflowSettings()
        redis_client: aioredis.Redis | str | None = redis_url
        for obj in native:
            if isinstance(obj, aioredis.Redis) or (
                isinstance(obj, str) and obj.startswith(("redis://", "rediss://", "unix://"))
            ):
                redis_client = obj
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
        if store is None:
            redis_client = redis_client or settings.redis_url
            if redis_client is None or redis_client == "memory://":
                store = defaulted = MemoryStore(
                    prefix=key_prefix or settings.key_prefix,
                    active_ttl=settings.active_ttl,
                    finished_ttl=settings.finished_ttl,
                )
            else:
                store = RedisStore(
                    redis_client,
                    prefix=key_prefix or settings.key_prefix,
                    active_ttl=settings.active_ttl,
                    finished_ttl=settings.finished_ttl,
                )
        self.resend_after = settings.resend_after if resend_after is None else resend_after
        self._store: StateStore = store
        self._defaulted_store = defaulted
        self._engine = Engine(store, resend_after=self.resend_after)
        self._reconcilers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Event]
        ] = weakref.WeakKeyDictionary()
        if isinstance(backend, TaskBackend):
            if backend_options:
                raise ConfigurationError(
                    f"options {sorted(backend_options)} given with a backend instance; "
                    "configure the backend object instead"
                )
            self.backend = backend
        else:
            cls = load_backend_class(backend or settings.backend)
            self.backend = cls.from_options(backend_options)
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
    ) -> Callable[[FnT], FnT]:
        """Register a function (async or sync) as a task runnable by name on any worker.

        It receives a validated ``input_validator`` model, or a dict without one.
        ``retries`` extra attempts are made on failure; error callbacks fire after the last.
        """

        def decorate(fn: FnT) -> FnT:
            task_name = name or fn.__name__
            existing = self.tasks.get(task_name)
            if existing is not None and existing.fn is not fn:
                raise TaskAlreadyRegisteredError(
                    f"task name {task_name!r} is already registered to {existing.fn!r}; "
                    "choose another name"
                )
            registered = RegisteredTask(task_name, fn, input_validator, retries, timeout)
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
            self._engine = Engine(store, resend_after=self.resend_after)
        if backend is not None:
            self.backend = backend
            self._started = False
            backend.on_worker_start(self.start_reconciler)
            backend.register_fallback(self._handle_unregistered)
            for registered in self.tasks.values():
                backend.register(self._definition(registered))
        return previous

    def _definition(self, registered: RegisteredTask) -> TaskDefinition:
        return TaskDefinition(
            name=registered.name,
            handler=functools.partial(self._handle, registered),
            retries=registered.retries,
            timeout=registered.timeout,
            input_model=registered.input_model,
        )

    async def _handle(self, task: RegisteredTask, payload: Any, ctx: RunContext) -> Any:
        await self.ensure_started()
        return await run_task(self, task, payload, ctx)

    async def _handle_unregistered(self, payload: Any, ctx: RunContext) -> None:
        await self.ensure_started()
        await fail_unregistered(self, payload, ctx)

    def task_name_of(self, value: TaskLike) -> str:
        name = value if isinstance(value, str) else getattr(value, "__mageflow_task__", None)
        if not isinstance(name, str):
            raise TypeError(
                f"expected a signature, a @mf.task function or a task name, got {value!r}"
            )
        if name not in self.tasks:
            raise TaskNotRegisteredError(name, self.tasks)
        return name

    # -- building workflows ---------------------------------------------------------------
    async def sign(
        self,
        task: TaskLike,
        *,
        task_identifiers: dict[str, Any] | None = None,
        success_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        error_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        **kwargs: Any,
    ) -> Signature:
        """A stored signature of ``task`` with ``kwargs`` merged into its message."""
        if isinstance(task, Signature) and not (kwargs or success_callbacks or error_callbacks):
            return task
        name = self.task_name_of(task)
        b = WorkflowBuilder(self, new_workflow_id())
        ok, err = await b.callbacks(
            ROOT, callbacks_of(success_callbacks), callbacks_of(error_callbacks)
        )
        b.node(
            ROOT,
            NodeDef(kind="task", task=name, on_success=ok, on_error=err),
            kwargs=kwargs,
            identifiers=task_identifiers,
        )
        await b.commit()
        return Signature(self, f"{b.wf}.{ROOT}")

    async def chain(
        self,
        tasks: Sequence[TaskLike],
        *,
        name: str | None = None,
        success: Sequence[TaskLike] | TaskLike | None = None,
        error: Sequence[TaskLike] | TaskLike | None = None,
    ) -> ChainSignature:
        """Steps run in order; step k+1 receives step k's result; ``success`` gets the last
        result; a failing step fires its own error callbacks, then ``error``."""
        b = WorkflowBuilder(self, new_workflow_id())
        steps = [f"{ROOT}.{i}" for i in range(len(tasks))]
        await b.task_likes(zip(steps, tasks, strict=True), parent=ROOT)
        ok, err = await b.callbacks(ROOT, callbacks_of(success), callbacks_of(error))
        b.node(ROOT, NodeDef(kind="chain", name=name, on_success=ok, on_error=err))
        b.lists[F.aux(F.STEPS, ROOT)] = steps
        await b.commit()
        return ChainSignature(self, f"{b.wf}.{ROOT}")

    async def swarm(
        self,
        tasks: Sequence[TaskLike] = (),
        *,
        success_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        error_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        config: SwarmConfig | None = None,
        is_swarm_closed: bool = False,
        task_name: str | None = None,
    ) -> SwarmSignature:
        """Items run in parallel (``config.max_concurrency`` at most, across workers).
        The swarm is open by default (the product documents' semantics): add items with
        :meth:`SwarmSignature.add_task`, then :meth:`SwarmSignature.close_swarm`; it
        completes once closed and every item finished. ``is_swarm_closed=True`` closes it
        at creation."""
        b = WorkflowBuilder(self, new_workflow_id())
        items = unique_item_ids(ROOT, len(tasks))
        await b.task_likes(zip(items, tasks, strict=True), parent=ROOT)
        await b.swarm_root(
            success_callbacks, error_callbacks, config, is_swarm_closed, task_name, items
        )
        await b.commit()
        return SwarmSignature(self, f"{b.wf}.{ROOT}")

    async def swarm_of(
        self,
        task: TaskLike,
        items: Iterable[Mapping[str, Any]],
        *,
        success_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        error_callbacks: Sequence[TaskLike] | TaskLike | None = None,
        config: SwarmConfig | None = None,
        is_swarm_closed: bool = False,
        task_name: str | None = None,
    ) -> SwarmSignature:
        """A swarm of ``task`` (a ``@mf.task`` function or a task name) with one item per
        kwargs mapping in ``items``, in order: what :meth:`swarm` builds from
        ``[await mf.sign(task, **kw) for kw in items]``, written at once.

        The keywords are :meth:`swarm`'s. All-or-nothing: every item is validated before
        anything is written, and a failed write leaves nothing that can be loaded or run.
        Raises :class:`NotATaskError` for a signature, :class:`PayloadNotSerializableError`
        for an item that is not a JSON-serialisable mapping."""
        b = WorkflowBuilder(self, new_workflow_id())
        bulk = b.task_items(ROOT, task, items)
        b.store_items(bulk)
        await b.swarm_root(
            success_callbacks, error_callbacks, config, is_swarm_closed, task_name, bulk.sids
        )
        await b.commit()
        return SwarmSignature(self, f"{b.wf}.{ROOT}")

    async def load(self, key: str) -> Signature:
        """The signature, chain or swarm stored under ``key``."""
        d = await read_def(self, key)
        return handle_for(self, key, d.kind)

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
        if not self._started:
            self._started = True
            await self.backend.startup()

    def start_reconciler(self) -> None:
        """Run the reconciler sweep on this event loop (once per loop; workers call it)."""
        loop = asyncio.get_running_loop()
        running = self._reconcilers.get(loop)
        if running is None or running[0].done():
            stop = asyncio.Event()
            task = loop.create_task(reconcile.run_until(self, stop), name="mageflow-reconciler")
            self._reconcilers[loop] = (task, stop)

    async def reconcile(self) -> int:
        """Re-send, once, whatever is due: dispatched and never started. Returns how many
        tasks were re-sent (``mageflow reconcile`` runs this)."""
        return await reconcile.sweep_due(self)

    def run_worker(self, *, concurrency: int | None = None) -> None:
        """Serve this instance's tasks until interrupted (blocking). Raises
        :class:`ConfigurationError` when the workers could not share the store."""
        self._refuse_unshared_store()
        self.backend.run_worker(concurrency=concurrency)

    async def aclose(self) -> None:
        running = self._reconcilers.pop(asyncio.get_running_loop(), None)
        if running is not None:
            task, stop = running
            stop.set()
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
        await self.backend.shutdown()
        await self._store.close()
        self._started = False
