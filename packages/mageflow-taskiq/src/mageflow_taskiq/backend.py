"""MageFlow transport over taskiq.

Every MageFlow task becomes a taskiq task of the configured broker, named after the
MageFlow task. A message carries two keyword arguments, ``payload`` (the JSON payload)
and ``headers`` (string headers, among them :data:`mageflow.backend.base.HEADER_KEY`),
serialised by the broker's serializer, which must not be pickle.

Retries use taskiq's retry middleware (:class:`~taskiq.SimpleRetryMiddleware` is added
to the broker when neither it nor :class:`~taskiq.SmartRetryMiddleware` is present). The
task function sets the ``retry_on_error`` and ``max_retries`` labels of the running
message from the worker's :class:`TaskDefinition`, and reads the middleware's
``_retries`` label for the attempt number. The retry middleware re-sends with the same
taskiq ``task_id``, which is therefore the run id.

Retry backoff: taskiq delays a message only through a scheduler process (a schedule
source, minute-grained for Redis) or brokers that read a ``delay`` label (not the Redis
ones), so the adapter does it. A failed attempt that will be retried stamps its message
with :data:`RETRY_AT` (epoch seconds: now + the task's backoff delay); the retry
middleware copies the label into the retry message, which is in the broker at once, and
the original is acknowledged. The worker that receives the retry sleeps (``asyncio``,
the event loop keeps serving other tasks) until then before running it; it holds the
message unacknowledged meanwhile, so if it dies the broker redelivers the retry (after
``idle_timeout``) and the next worker waits only for what remains of the same due time.

taskiq's receiver acknowledges and drops a message whose task name the worker has no task
for. The backend makes the broker's ``find_task`` answer such a name with one fallback task
(:data:`FALLBACK_TASK`) that hands the message to the core, which fails its workflow node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import signal
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from taskiq import (
    AsyncBroker,
    Context,
    InMemoryBroker,
    SimpleRetryMiddleware,
    SmartRetryMiddleware,
    TaskiqDepends,
    TaskiqEvents,
    TaskiqState,
)
from taskiq.kicker import AsyncKicker
from taskiq.receiver import Receiver
from taskiq.serializers import PickleSerializer
from taskiq_redis import RedisStreamBroker

from mageflow.backend.base import (
    Capabilities,
    OutgoingTask,
    RunContext,
    StreamDelivery,
    TaskBackend,
    TaskDefinition,
    TaskHandler,
)
from mageflow.errors import ConfigurationError, NonRetryableError
from mageflow.models.options import DEFAULT_QUEUE as OPTIONS_DEFAULT_QUEUE
from mageflow.store import CLUSTER_SCHEMES, URL_SCHEMES, redact_url
from mageflow.store.redis import DEFAULT_PREFIX as DEFAULT_KEY_PREFIX
from mageflow_taskiq.delivery import stream_delivery
from mageflow_taskiq.streams import ReclaimingStreamBroker, build_stream_broker, cancel_and_wait

logger = logging.getLogger(__name__)

ENV_BROKER = "MAGEFLOW_TASKIQ_BROKER"
ENV_URL = "MAGEFLOW_TASKIQ_URL"
ENV_QUEUE = "MAGEFLOW_TASKIQ_QUEUE"
ENV_IDLE_TIMEOUT = "MAGEFLOW_TASKIQ_IDLE_TIMEOUT"
ENV_DEAD_CONSUMER_AFTER = "MAGEFLOW_TASKIQ_DEAD_CONSUMER_AFTER"
DEFAULT_QUEUE = "mageflow"
DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds after which the messages of a worker that stopped renewing its claims (it died,
or its event loop was blocked for 2/3 of this) are handed to another worker."""

_OPTIONS = ("broker", "broker_url", "queue_name", "idle_timeout")
_RETRIES = "_retries"  # written by taskiq's retry middlewares: retries done so far
_MAX_RETRIES = "max_retries"  # read by them: total attempts allowed
_RETRY_ON_ERROR = "retry_on_error"
RETRY_AT = "mageflow_retry_at"
"""Label of a retry message: when (epoch seconds) the attempt may start, per the backoff."""
_PUBLISH_CONCURRENCY = 16
FALLBACK_TASK = "mageflow.unregistered"
"""The taskiq task that runs, on a worker, a message whose task name it does not serve."""
_FALLBACKS: weakref.WeakKeyDictionary[AsyncBroker, TaskHandler] = weakref.WeakKeyDictionary()
_HOW_TO_CONFIGURE = (
    "pass broker=<taskiq broker or 'module:attr'> or broker_url='redis://...', "
    f"or set {ENV_BROKER}=module:attr or {ENV_URL}=redis://host:6379/0"
)


def _import_broker(spec: str) -> Any:
    from taskiq.cli.utils import import_object

    try:
        obj = import_object(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot import the taskiq broker {spec!r} (expected 'module:attribute', "
            f"as for `taskiq worker`): {exc}"
        ) from exc
    return obj() if inspect.isfunction(obj) else obj  # a factory, as `taskiq worker` allows


MIN_IDLE_TIMEOUT = 1.0
"""Below this, a worker's claims lapse between renewals: running messages would be
handed to another worker (a double run) or the reclaim loop would spin."""


def _idle_timeout(value: object, source: str) -> float:
    """``value`` (an option or the environment's text) as a finite number of seconds of
    at least :data:`MIN_IDLE_TIMEOUT`. Raises :class:`ConfigurationError` naming ``source``."""
    try:
        seconds = float(value)  # type: ignore[arg-type]  # refused below when it is not
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < MIN_IDLE_TIMEOUT:
        raise ConfigurationError(
            f"{source} must be a number of seconds of at least {MIN_IDLE_TIMEOUT:g}, got {value!r}"
        )
    return seconds


def _check_broker_url(url: object) -> None:
    scheme = str(url).partition("://")[0].lower() if "://" in str(url) else ""
    if isinstance(url, str) and scheme in CLUSTER_SCHEMES:
        raise ConfigurationError(
            f"the taskiq broker ({ENV_URL} or broker_url=) {redact_url(url)!r} is a Redis "
            "Cluster: the broker's streams need a single Redis (its consumer group reads "
            "several queues in one command and reclaims a dead worker's messages); keep the "
            "state on the cluster (MAGEFLOW_REDIS_URL=redis+cluster://...) and point the "
            "broker at a single Redis"
        )
    if not isinstance(url, str) or scheme not in URL_SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigurationError(
            f"the taskiq broker URL ({ENV_URL} or broker_url=) {shown!r} is not a Redis "
            "URL; use redis://host:6379/0, rediss://... or unix:///path/to/redis.sock"
        )


async def _wait_until(retry_at: Any, ctx: RunContext) -> None:
    """Sleep until the epoch time of a retry's :data:`RETRY_AT` label (if any)."""
    if retry_at is None:
        return
    try:
        wait = float(retry_at) - time.time()
    except (TypeError, ValueError):
        logger.warning("ignoring an unreadable %s label: %r", RETRY_AT, retry_at)
        return
    if wait > 0:
        logger.info(
            "run %s (%s): attempt %d waits %.3f s for its backoff",
            ctx.run_id,
            ctx.task_name,
            ctx.attempt,
            wait,
        )
        await asyncio.sleep(wait)


def _task_function(definition: TaskDefinition) -> Any:
    """The taskiq task behind ``definition``: builds the RunContext, runs the handler."""
    handler: TaskHandler = definition.handler
    max_attempts = definition.retries + 1

    async def run(
        payload: Any = None,
        headers: dict[str, str] | None = None,
        context: Context = TaskiqDepends(),  # noqa: B008 (taskiq injects it)
    ) -> Any:
        message = context.message
        labels = message.labels
        attempt = int(labels.get(_RETRIES, 0)) + 1
        # The retry middleware reads these labels of this very message in on_error, so
        # the worker's registration, not the publisher, decides how often to retry.
        labels[_MAX_RETRIES] = max_attempts
        labels[_RETRY_ON_ERROR] = definition.retries > 0
        delivery = ReclaimingStreamBroker.delivery_of(context)
        ctx = RunContext(
            task_name=definition.name,
            run_id=message.task_id,
            attempt=attempt,
            is_final_attempt=attempt >= max_attempts,
            headers=dict(headers or {}),
            first_delivery=delivery is not None and delivery.fresh,
            entry=None if delivery is None or delivery.released else delivery.entry,
        )
        await _wait_until(labels.get(RETRY_AT), ctx)
        try:
            # the core enforces definition.timeout around the user code itself
            return await handler(payload, ctx)
        except NonRetryableError:
            labels[_RETRY_ON_ERROR] = False
            raise
        except Exception:
            if not ctx.is_final_attempt and definition.backoff is not None:
                # copied into the retry message by the retry middleware's on_error
                labels[RETRY_AT] = f"{time.time() + definition.retry_delay(attempt):.6f}"
            raise

    run.__qualname__ = run.__name__ = definition.name
    return run


def _held_for(definition: TaskDefinition) -> float:
    """Seconds a worker may hold one message of ``definition``: the backoff wait before
    the attempt, then the attempt."""
    wait = definition.backoff.max if definition.backoff and definition.retries else 0.0
    return wait + (definition.timeout or 0)


def _fallback_function(broker: AsyncBroker) -> Any:
    """The taskiq task behind :data:`FALLBACK_TASK`: the core's fallback handler, called
    with the message's own (unknown) task name. Never retried."""

    async def unregistered(
        payload: Any = None,
        headers: Any = None,
        context: Context = TaskiqDepends(),  # noqa: B008 (taskiq injects it)
        **_kwargs: Any,  # a message that MageFlow did not send may carry anything
    ) -> None:
        message = context.message
        message.labels[_RETRY_ON_ERROR] = False
        ctx = RunContext(
            task_name=message.task_name,
            run_id=message.task_id,
            attempt=int(message.labels.get(_RETRIES, 0)) + 1,
            is_final_attempt=True,
            headers=dict(headers) if isinstance(headers, dict) else {},
        )
        await _FALLBACKS[broker](payload, ctx)

    return unregistered


def _route_unknown_names(broker: AsyncBroker) -> None:
    """Make ``broker.find_task`` (what taskiq's receiver looks a message's task up with)
    answer a name it does not know with :data:`FALLBACK_TASK`."""
    fallback = broker.register_task(_fallback_function(broker), task_name=FALLBACK_TASK)
    find = broker.find_task

    def find_task(task_name: str) -> Any:
        return find(task_name) or fallback

    broker.find_task = find_task  # type: ignore[method-assign]


class ShutdownSafeReceiver(Receiver):
    """taskiq's Receiver, except that on shutdown it cancels the pending broker read until
    that read really stops. On Python < 3.12 ``asyncio.wait_for``, which redis-py uses to
    send a command, can swallow a cancellation; the worker then never exits. ``run_worker``
    uses it; for the CLI add ``--receiver mageflow_taskiq.backend:ShutdownSafeReceiver``.
    It also tells a :class:`ReclaimingStreamBroker` how many tasks the worker runs at once,
    so that a read takes as many messages as there are free slots.
    """

    def __init__(self, broker: AsyncBroker, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker, *args, **kwargs)
        slots = kwargs.get("max_async_tasks")
        if isinstance(broker, ReclaimingStreamBroker) and isinstance(slots, int) and slots > 0:
            broker.slots = slots

    async def _close_prefetch_state(self, state: Any) -> Any:
        if state.current_message is not None:
            await cancel_and_wait(state.current_message)
        return await super()._close_prefetch_state(state)


def _signals_wake_loop(broker: AsyncBroker) -> None:
    """Make taskiq's worker react to SIGINT/SIGTERM at once.

    ``taskiq worker`` installs its handlers with ``signal.signal``, which does not wake the
    event loop: the shutdown only starts when the broker's blocking read returns, right
    where a swallowed cancellation (see :class:`ShutdownSafeReceiver`) leaves a
    RedisStreamBroker worker running forever. Routing the same handlers through
    ``loop.add_signal_handler`` runs them at once, while the read is still waiting.
    """

    def on_startup(_state: TaskiqState) -> None:
        if not broker.is_worker_process or threading.current_thread() != threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if callable(handler):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, handler, sig, None)

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, on_startup)


class TaskiqBackend(TaskBackend):
    """Runs MageFlow tasks as taskiq tasks of one broker."""

    name = "taskiq"
    accepted_options = _OPTIONS
    capabilities = Capabilities(
        cancel_running=False,  # taskiq 0.13 has no API to stop a running task
        priorities=False,  # a ``priority`` label is sent; only some brokers (aio-pika) use it
        delayed_start=False,  # taskiq delays only through its separate scheduler process
        remote_workers=True,
        routing=True,  # a stream per queue (Redis stream brokers only)
    )

    def __init__(self, broker: AsyncBroker, *, import_path: str | None = None) -> None:
        if not isinstance(broker, AsyncBroker):
            raise ConfigurationError(
                f"broker= must be a taskiq broker (AsyncBroker), got {type(broker).__name__}"
            )
        if isinstance(broker.serializer, PickleSerializer):
            raise ConfigurationError(
                "MageFlow payloads are JSON; give the taskiq broker a JSON serializer "
                "instead of PickleSerializer (taskiq's default JSONSerializer works)"
            )
        if not any(
            isinstance(m, (SimpleRetryMiddleware, SmartRetryMiddleware)) for m in broker.middlewares
        ):
            # default_retry_label=False: tasks that are not MageFlow's are left alone.
            broker.add_middlewares(SimpleRetryMiddleware(default_retry_label=False))
        _signals_wake_loop(broker)
        broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, self._on_worker_startup)
        self.broker = broker
        self.import_path = import_path
        self.derive_queue = False
        """The queue name was not given: :meth:`use_key_prefix` derives it."""
        self._started = False
        self._start_lock = asyncio.Lock()

    def _on_worker_startup(self, _state: TaskiqState) -> None:
        # inside the worker's event loop: the core starts its reconciler here
        self.worker_started()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TaskiqBackend:
        cls.check_options(options)
        broker = options.get("broker")
        url = options.get("broker_url")
        if broker is not None and url is not None:
            raise ConfigurationError("give the taskiq backend broker= or broker_url=, not both")
        if broker is None and url is None:
            broker = os.environ.get(ENV_BROKER) or None
            url = None if broker else os.environ.get(ENV_URL) or None
        if broker is None and url is None:
            raise ConfigurationError(f"the taskiq backend has no broker: {_HOW_TO_CONFIGURE}")
        if url is not None:
            _check_broker_url(url)
            named = options.get("queue_name") or os.environ.get(ENV_QUEUE)
            queue = named or DEFAULT_QUEUE
            idle = options.get("idle_timeout")
            if idle is not None:
                idle = _idle_timeout(idle, "idle_timeout=")
            elif os.environ.get(ENV_IDLE_TIMEOUT):
                idle = _idle_timeout(os.environ[ENV_IDLE_TIMEOUT], ENV_IDLE_TIMEOUT)
            else:
                idle = DEFAULT_IDLE_TIMEOUT
            stream = build_stream_broker(str(url), queue_name=queue, idle_timeout=idle)
            if os.environ.get(ENV_DEAD_CONSUMER_AFTER):
                stream.dead_consumer_after = _idle_timeout(
                    os.environ[ENV_DEAD_CONSUMER_AFTER], ENV_DEAD_CONSUMER_AFTER
                )
            backend = cls._for(stream)
            backend.derive_queue = not named
            return backend
        if "queue_name" in options or "idle_timeout" in options:
            raise ConfigurationError(
                "queue_name= and idle_timeout= apply only with broker_url=; "
                "set them on your own broker instead"
            )
        if isinstance(broker, str):
            return cls._for(_import_broker(broker), import_path=broker)
        return cls._for(broker)

    @classmethod
    def _for(cls, broker: Any, import_path: str | None = None) -> TaskiqBackend:
        if cls is TaskiqBackend and isinstance(broker, InMemoryBroker):
            return _InMemoryTaskiqBackend(broker, import_path=import_path)
        return cls(broker, import_path=import_path)

    def register_fallback(self, handler: TaskHandler) -> None:
        if self.broker not in _FALLBACKS:
            _route_unknown_names(self.broker)
        _FALLBACKS[self.broker] = handler

    def register(self, definition: TaskDefinition) -> None:
        idle_ms = getattr(self.broker, "idle_timeout", None)
        if (
            isinstance(idle_ms, int)
            and not isinstance(self.broker, ReclaimingStreamBroker)
            and _held_for(definition) * 1000 >= idle_ms
        ):
            logger.warning(
                "task %r may hold its message %ss (its timeout plus its longest retry "
                "backoff), longer than the broker's idle_timeout (%ss): a run still going "
                "then is delivered to a second worker (use broker_url=)",
                definition.name,
                _held_for(definition),
                idle_ms / 1000,
            )
        self.broker.register_task(_task_function(definition), task_name=definition.name)

    def use_key_prefix(self, prefix: str) -> None:
        """Give each key prefix its own stream (issue 13 item 5): with the queue name
        left unset, the stream of prefix ``p`` other than the default is ``p:tasks``, so
        two apps on one Redis never take each other's messages."""
        if self.derive_queue and prefix != DEFAULT_KEY_PREFIX:
            self.broker.queue_name = f"{prefix}:tasks"  # type: ignore[attr-defined]

    def stream_for(self, queue: str | None) -> str:
        """The stream of routing queue ``queue``: the broker's own for ``default``,
        ``<stream>.<queue>`` for the others."""
        base = getattr(self.broker, "queue_name", None)
        if not isinstance(self.broker, RedisStreamBroker) or not isinstance(base, str):
            raise ConfigurationError(
                "routing tasks to queues needs a Redis stream broker (broker_url=, or a "
                f"taskiq_redis.RedisStreamBroker); {type(self.broker).__name__} has no queues"
            )
        return base if queue in (None, OPTIONS_DEFAULT_QUEUE) else f"{base}.{queue}"

    def stream_delivery(self) -> StreamDelivery | None:
        """A Redis stream broker with a JSON serializer: the engine appends dispatched
        tasks' messages to their streams itself when the store is on the same server and
        database (no priority label: Redis streams have no priorities)."""
        base = getattr(self.broker, "queue_name", None)
        if not isinstance(base, str):
            return None
        return stream_delivery(self.broker, base, f"{base}.")

    def serve_queues(self, queues: Sequence[str]) -> None:
        streams = [self.stream_for(q) for q in queues]
        if not isinstance(self.broker, ReclaimingStreamBroker):
            raise ConfigurationError(
                "serving chosen queues needs the broker built from broker_url= "
                f"({ENV_URL}); a {type(self.broker).__name__} reads only its own queue"
            )
        super().serve_queues(queues)
        self.broker.served_streams = streams

    async def publish(self, task: OutgoingTask) -> str:
        await self.startup()
        labels: dict[str, Any] = {}
        if task.priority is not None:
            labels["priority"] = task.priority
        if task.queue not in (None, OPTIONS_DEFAULT_QUEUE) and not isinstance(
            self.broker, InMemoryBroker
        ):
            labels["queue_name"] = self.stream_for(task.queue)  # read by the stream's kick
        kicker: AsyncKicker[Any, Any] = AsyncKicker(task.task_name, self.broker, labels)
        sent = await kicker.kiq(payload=task.payload, headers=dict(task.headers))
        return sent.task_id

    async def publish_many(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        await self.startup()
        limit = asyncio.Semaphore(_PUBLISH_CONCURRENCY)

        async def one(task: OutgoingTask) -> str:
            async with limit:
                return await self.publish(task)

        return list(await asyncio.gather(*(one(task) for task in tasks)))

    async def startup(self) -> None:
        # In a worker the receiver owns the broker's lifecycle.
        if self._started or self.broker.is_worker_process:
            return
        async with self._start_lock:
            if not self._started:
                # For RedisStreamBroker this also creates the consumer group, without
                # which messages sent before the first worker starts would be skipped.
                await self.broker.startup()
                self._started = True

    async def shutdown(self) -> None:
        if self._started:
            self._started = False
            await self.broker.shutdown()

    def run_worker(self, *, concurrency: int | None = None) -> None:
        """Serve in this process, like ``taskiq worker module:broker --workers 1``;
        ``concurrency`` is taskiq's ``--max-async-tasks``. SIGINT/SIGTERM stop it after
        the running tasks finish. For several processes run ``taskiq worker -w N``."""
        if isinstance(self.broker, InMemoryBroker):
            raise ConfigurationError(
                "InMemoryBroker runs tasks inside the publishing process; it has no "
                f"workers. Use a Redis broker ({ENV_URL}) to run workers"
            )
        from taskiq.cli.worker.args import WorkerArgs
        from taskiq.cli.worker.run import start_listen

        args = WorkerArgs(
            broker=self.broker,  # type: ignore[arg-type]  # start_listen accepts an instance
            modules=[],
            workers=1,
            max_async_tasks=concurrency or WorkerArgs.max_async_tasks,
            receiver=f"{__name__}:{ShutdownSafeReceiver.__name__}",
        )
        logging.basicConfig(level=args.log_level, format=args.log_format)
        if logging.getLogger("taskiq").level == logging.NOTSET:  # else: mageflow --log-level
            logging.getLogger("taskiq").setLevel(args.log_level)
        start_listen(args)

    def describe(self) -> Mapping[str, str]:
        info = {"broker": type(self.broker).__name__}
        if self.import_path:
            info["import_path"] = self.import_path
        queue, idle_ms = (getattr(self.broker, a, None) for a in ("queue_name", "idle_timeout"))
        if isinstance(queue, str):
            info["queue_name"] = queue
        if isinstance(idle_ms, int):
            info["idle_timeout"] = f"{idle_ms / 1000:g}s"
        return info


class _InMemoryTaskiqBackend(TaskiqBackend):
    """A TaskiqBackend over InMemoryBroker: tasks run in the publisher's process."""

    capabilities = Capabilities(remote_workers=False)
