"""MageFlow transport over Hatchet.

Every MageFlow task becomes a Hatchet *standalone task* (a one-task workflow) of the same
name. A message is a Hatchet run of that task: its input is the JSON object MageFlow
published (validated by :class:`Payload`, which accepts any object), its
``additional_metadata`` carries the string headers, among them
:data:`mageflow.backend.base.HEADER_KEY`, the signature key. Retries are Hatchet retries
of the run, which keeps its id; so do reassignments after a worker is lost. That run id
(``ctx.workflow_run_id``, the id ``publish`` returns) is the :class:`RunContext` run id and
what :meth:`HatchetBackend.cancel` cancels over Hatchet's REST API.

Publishing never waits for a result (MageFlow waits on its store), and it goes through
the SDK's blocking gRPC stubs in a thread, outside any Hatchet task context: a publish
made by a running task starts an independent run, not a child run of that task, and it
works from any event loop. A cancelled run's task is cancelled as soon as the worker
hears of it, and again until it stops (see :func:`_cancel_at_once`). A task's
``timeout`` is the core's to enforce; Hatchet's execution timeout is set above it.

A task's ``backoff`` is Hatchet's to wait: a failed attempt that will be retried raises
``RetryAfterException`` with the core's delay (:meth:`TaskDefinition.retry_delay`), so
the engine holds the retry, the worker's slot is free at once, and a worker that dies
loses nothing. The task also gets Hatchet's native policy (``backoff_factor`` = factor,
``backoff_max_seconds`` = max rounded up), which Hatchet applies where no delay is
given: engines older than v0.111.0 (they ignore ``retry_after_ms``) and the retries it
makes on its own (its execution-timeout backstop). Hatchet's delay before retry ``n`` is
``min(backoff_max_seconds, backoff_factor ** n)``: the same as the core's when
``initial == factor`` and ``jitter == 0``, an approximation otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import math
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from hatchet_sdk import (
    BulkCancelReplayOpts,
    Context,
    Hatchet,
    NonRetryableException,
    RetryAfterException,
    ScheduleTriggerWorkflowOptions,
    TriggerWorkflowOptions,
    WorkflowRunTriggerConfig,
)
from hatchet_sdk.runnables.workflow import BaseWorkflow, Standalone
from pydantic import RootModel, ValidationError

from mageflow.backend.base import (
    JSON,
    Capabilities,
    OutgoingTask,
    RunContext,
    TaskBackend,
    TaskDefinition,
)
from mageflow.errors import ConfigurationError, NonRetryableError, PayloadNotSerializableError
from mageflow.models.options import DEFAULT_QUEUE

T = TypeVar("T")

DEFAULT_WORKER_NAME = "mageflow"
DEFAULT_EXECUTION_TIMEOUT = 3600.0
"""Seconds Hatchet lets an attempt of a task without ``timeout=`` run."""
DEFAULT_SCHEDULE_TIMEOUT = 24 * 3600.0
"""Seconds a run may wait for a free worker slot before Hatchet fails it."""
TIMEOUT_GRACE = 5
"""Seconds Hatchet's execution timeout exceeds a task's own ``timeout=``: the core enforces
that one (an ordinary, retried failure); Hatchet's only stops a hung worker's attempt."""
CANCEL_REPEAT = 0.01
"""Seconds between cancellations of a cancelled task that has not stopped yet."""
MIN_PRIORITY, MAX_PRIORITY = 1, 3  # Hatchet's Priority.LOW .. Priority.HIGH
WRAPPED = "__mageflow_payload__"
"""Input key of a payload that is not a JSON object (Hatchet inputs are objects)."""

_OPTIONS = ("hatchet", "worker_name", "slots", "execution_timeout", "schedule_timeout")


class Payload(RootModel[dict[str, Any]]):
    """The Hatchet input of every MageFlow task: the JSON object MageFlow published."""


def _isolated(call: Callable[[], T]) -> Callable[[], T]:
    """``call`` run in an empty context: the SDK reads the running task's ids from
    context variables and would otherwise make the new run a child of that task."""
    return functools.partial(contextvars.Context().run, call)


def _headers(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, and again every ``CANCEL_REPEAT`` s while it runs: on Python < 3.12
    ``asyncio.wait_for`` (which redis-py and other clients use) can swallow a cancellation
    that arrives as the awaited call completes, and the task would then run on."""
    if not task.done():
        task.cancel()
        task.get_loop().call_later(CANCEL_REPEAT, _cancel_until_done, task)


def _cancel_at_once(ctx: Context) -> None:
    """Cancel the running task as soon as Hatchet cancels its run.

    On ``CANCEL_STEP_RUN`` the SDK flags the context at once but cancels the task's
    asyncio task only a second later (a grace period for tasks that poll
    ``ctx.is_cancelled``), and only once. MageFlow tasks never see the context, so the
    flag cancels the task right away, until it stops.
    """
    task = asyncio.current_task()
    set_flag = getattr(ctx, "_set_cancellation_flag", None)
    if task is None or set_flag is None:  # another SDK version: keep its behaviour
        return

    def set_flag_and_cancel() -> None:
        set_flag()
        _cancel_until_done(task)

    ctx._set_cancellation_flag = set_flag_and_cancel  # type: ignore[method-assign]


def _native_backoff(definition: TaskDefinition) -> dict[str, Any]:
    """Hatchet's own backoff policy for the task (see the module docstring)."""
    backoff = definition.backoff
    if not definition.retries or backoff is None or backoff.initial == 0:
        return {}  # no policy: Hatchet retries at once, as MageFlow asks
    return {
        "backoff_factor": backoff.factor,
        "backoff_max_seconds": max(1, math.ceil(backoff.max)),
    }


def _retry_after_ms(definition: TaskDefinition, attempt: int) -> int:
    """Milliseconds Hatchet is to wait after failed attempt ``attempt``, rounded up."""
    return math.ceil(definition.retry_delay(attempt) * 1000)


def _task_function(definition: TaskDefinition) -> Callable[[Payload, Context], Any]:
    """The Hatchet task behind ``definition``: builds the RunContext, runs the handler."""
    handler = definition.handler

    async def run(input: Payload, ctx: Context) -> dict[str, Any]:
        attempt = ctx.attempt_number  # retry_count + 1; a reassignment does not count
        run_ctx = RunContext(
            task_name=definition.name,
            run_id=ctx.workflow_run_id,
            attempt=attempt,
            is_final_attempt=attempt > definition.retries,
            headers=_headers(ctx.additional_metadata),
        )
        _cancel_at_once(ctx)
        data = input.root
        payload: JSON = data[WRAPPED] if data.keys() == {WRAPPED} else data
        try:  # the core enforces definition.timeout; Hatchet's is only a backstop
            result = await handler(payload, run_ctx)
        except NonRetryableError as exc:  # the core's "do not retry", naming the cause
            cause = exc.__cause__ or exc
            raise NonRetryableException(f"{type(cause).__name__}: {cause}") from exc
        except Exception as exc:
            wait_ms = 0 if run_ctx.is_final_attempt else _retry_after_ms(definition, attempt)
            if wait_ms <= 0:
                raise
            after = timedelta(milliseconds=wait_ms)
            raise RetryAfterException(f"{type(exc).__name__}: {exc}", after=after) from exc
        return {"result": result}

    run.__name__ = run.__qualname__ = definition.name
    return run


def _hatchet_from_env() -> Hatchet:
    try:
        return Hatchet()
    except ValidationError as exc:  # its str() would show the token: keep the messages
        reasons = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ConfigurationError(
            f"cannot configure the hatchet backend from the environment ({reasons}). "
            "Pass hatchet=Hatchet(...) to Mageflow(...), or set HATCHET_CLIENT_TOKEN "
            "(and HATCHET_CLIENT_TLS_STRATEGY=none for a server without TLS)"
        ) from None


def hatchet_priority(priority: int) -> int:
    """MageFlow's priority 0..9 as Hatchet's 1..3: 0-3 low, 4-6 medium, 7-9 high."""
    return min(MAX_PRIORITY, max(MIN_PRIORITY, MIN_PRIORITY + (int(priority) - 1) // 3))


class HatchetBackend(TaskBackend):
    """Runs MageFlow tasks as Hatchet standalone tasks of one Hatchet client."""

    name = "hatchet"
    accepted_options = _OPTIONS
    capabilities = Capabilities(
        cancel_running=True,  # REST cancel: the worker cancels the running asyncio task
        priorities=True,  # OutgoingTask.priority -> Hatchet priority 1..3
        delayed_start=True,  # OutgoingTask.delay -> a Hatchet scheduled run
        remote_workers=True,
        routing=True,  # a workflow per (task, queue), registered by the queue's workers
    )

    def __init__(
        self,
        hatchet: Hatchet | None = None,
        *,
        worker_name: str = DEFAULT_WORKER_NAME,
        slots: int | None = None,
        execution_timeout: float = DEFAULT_EXECUTION_TIMEOUT,
        schedule_timeout: float = DEFAULT_SCHEDULE_TIMEOUT,
    ) -> None:
        if hatchet is None:
            hatchet = _hatchet_from_env()
        if not isinstance(hatchet, Hatchet):
            raise ConfigurationError(
                f"hatchet= must be a hatchet_sdk.Hatchet client, got {type(hatchet).__name__}"
            )
        if slots is not None and slots < 1:
            raise ConfigurationError(f"slots= must be at least 1, got {slots}")
        for option, value in (("execution", execution_timeout), ("schedule", schedule_timeout)):
            if value < 1:
                raise ConfigurationError(f"{option}_timeout= must be >= 1 second, got {value}")
        self.hatchet = hatchet
        self.worker_name = worker_name
        self.slots = slots
        self.execution_timeout = execution_timeout
        self.schedule_timeout = schedule_timeout
        self.workflows: dict[str, Standalone[Payload, dict[str, Any]]] = {}
        self.definitions: dict[str, TaskDefinition] = {}
        self.served: tuple[str, ...] = (DEFAULT_QUEUE,)
        """The queues this process's worker serves (:meth:`serve_queues`)."""
        self._declared: set[str] = set()

    # -- routing ------------------------------------------------------------------------
    @staticmethod
    def routed_name(task_name: str, queue: str | None) -> str:
        """The Hatchet workflow of ``task_name`` routed to ``queue``: the task's own for
        ``default``, ``<task>@<queue>`` (registered only by workers serving that queue)
        for the others. Hatchet keeps a run queued until a worker registers its workflow."""
        return task_name if queue in (None, DEFAULT_QUEUE) else f"{task_name}@{queue}"

    def serve_queues(self, queues: Sequence[str]) -> None:
        super().serve_queues(queues)
        self.served = tuple(queues)

    async def _routed(self, task: OutgoingTask) -> str:
        """The workflow name to trigger for ``task``. Hatchet refuses to run a workflow
        nobody declared, so the first publish to a routed queue declares it (as its
        workers will): the run then waits until a worker serving the queue appears."""
        name = self.routed_name(task.task_name, task.queue)
        definition = self.definitions.get(task.task_name)
        if name != task.task_name and name not in self._declared and definition is not None:
            proto = self._workflow(definition, name).to_proto()
            await self._call(functools.partial(self.hatchet._client.admin.put_workflow, proto))
            self._declared.add(name)
        return name

    def _served_workflows(self) -> list[BaseWorkflow[Any]]:
        out: list[BaseWorkflow[Any]] = []
        for queue in self.served:
            if queue == DEFAULT_QUEUE:
                out += self.workflows.values()
            else:
                out += [
                    self._workflow(d, self.routed_name(name, queue))
                    for name, d in self.definitions.items()
                ]
        return out

    # -- tasks --------------------------------------------------------------------------
    def register(self, definition: TaskDefinition) -> None:
        clash = [n for n in self.workflows if n.lower() == definition.name.lower()]
        if clash and clash != [definition.name]:
            raise ConfigurationError(
                f"task names {clash[0]!r} and {definition.name!r} differ only in case; "
                "Hatchet does not tell them apart: rename one"
            )
        self.definitions[definition.name] = definition
        self.workflows[definition.name] = self._workflow(definition, definition.name)

    def _workflow(self, definition: TaskDefinition, name: str) -> Standalone[Payload, Any]:
        """The Hatchet task ``name`` running ``definition``."""
        if definition.timeout is None:
            timeout = self.execution_timeout
        else:
            timeout = math.ceil(definition.timeout) + TIMEOUT_GRACE
        return self.hatchet.task(
            name=name,
            input_validator=Payload,
            retries=definition.retries,
            execution_timeout=timedelta(seconds=math.ceil(timeout)),
            schedule_timeout=timedelta(seconds=math.ceil(self.schedule_timeout)),
            **_native_backoff(definition),
        )(_task_function(definition))

    # -- publishing ------------------------------------------------------------------------
    async def _call(self, call: Callable[[], T]) -> T:
        """Run a blocking SDK call in a thread (its gRPC/REST clients are loop-free)."""
        return await asyncio.get_running_loop().run_in_executor(None, _isolated(call))

    @staticmethod
    def _input(task: OutgoingTask) -> str:
        body = task.payload if isinstance(task.payload, dict) else {WRAPPED: task.payload}
        try:
            return json.dumps(body, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise PayloadNotSerializableError(
                f"the payload of task {task.task_name!r} is not JSON-serialisable: {exc}"
            ) from exc

    @staticmethod
    def _options(task: OutgoingTask) -> TriggerWorkflowOptions:
        priority = None
        if task.priority is not None:
            priority = hatchet_priority(task.priority)
        return TriggerWorkflowOptions(additional_metadata=dict(task.headers), priority=priority)

    async def _schedule(self, task: OutgoingTask) -> str:
        """A delayed task is a Hatchet scheduled run; returns the scheduled run's id."""
        options = self._options(task)
        when = datetime.now(timezone.utc) + timedelta(seconds=task.delay or 0)
        admin = self.hatchet._client.admin
        scheduled = await self._call(
            functools.partial(
                admin.schedule_workflow,
                await self._routed(task),
                [when],
                self._input(task),
                ScheduleTriggerWorkflowOptions(
                    additional_metadata=options.additional_metadata, priority=options.priority
                ),
            )
        )
        return str(scheduled.scheduled_workflows[0].id)

    async def publish(self, task: OutgoingTask) -> str:
        if task.delay:
            return await self._schedule(task)
        admin = self.hatchet._client.admin  # the SDK's own trigger path (v0 TriggerWorkflow)
        ref = await self._call(
            functools.partial(
                admin.run_workflow,
                await self._routed(task),
                self._input(task),
                self._options(task),
            )
        )
        return ref.workflow_run_id

    async def publish_many(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        now = [t for t in tasks if not t.delay]
        if len(now) < 2:
            return list(await asyncio.gather(*(self.publish(t) for t in tasks)))
        names = [await self._routed(t) for t in now]
        configs = [
            WorkflowRunTriggerConfig(
                workflow_name=name,
                input=self._input(t),
                options=self._options(t),
            )
            for t, name in zip(now, names, strict=True)
        ]
        admin = self.hatchet._client.admin  # one BulkTriggerWorkflow call per chunk
        refs = iter(await self._call(functools.partial(admin.run_workflows, configs)))
        return [await self._schedule(t) if t.delay else next(refs).workflow_run_id for t in tasks]

    async def cancel(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            opts = BulkCancelReplayOpts(ids=list(run_ids))
            await self._call(functools.partial(self.hatchet.runs.bulk_cancel, opts))

    # -- workers ----------------------------------------------------------------------------
    def run_worker(self, *, concurrency: int | None = None) -> None:
        """Serve every registered task in this process until SIGTERM/SIGINT, which let the
        running tasks finish first. ``concurrency`` is the worker's Hatchet slot count.

        The Hatchet worker must own the main thread and its event loop, and it starts its
        action listener with multiprocessing "spawn": a script that calls this at import
        time needs an ``if __name__ == "__main__":`` guard (``mageflow worker`` has one).
        """
        if not self.workflows:
            raise ConfigurationError(
                "no MageFlow task is registered on this hatchet backend: import the module "
                "that defines the @mf.task functions before starting the worker"
            )
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("a Hatchet worker must run in the main thread")
        slots = concurrency or self.slots
        backend = self

        async def lifespan() -> AsyncGenerator[None, None]:
            # inside the worker's event loop: the core starts its reconciler here
            backend.worker_started()
            yield

        worker = self.hatchet.worker(
            self.worker_name,
            slots=slots,
            workflows=self._served_workflows(),
            lifespan=lifespan,
        )
        worker.start()

    def describe(self) -> Mapping[str, str]:
        config = self.hatchet.config
        info = {"host_port": config.host_port, "worker_name": self.worker_name}
        if config.namespace:
            info["namespace"] = config.namespace
        if self.slots:
            info["slots"] = str(self.slots)
        return info
