"""Registered user tasks and the wrapper every backend runs them through."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from mageflow import faults
from mageflow.backend.base import HEADER_KEY, JSON, RunContext
from mageflow.engine import StartOutcome, split_key
from mageflow.engine import fields as F
from mageflow.errors import (
    InvalidKeyError,
    InvalidNameError,
    InvalidTaskInputError,
    NonRetryableError,
    NotInTaskError,
    PayloadNotSerializableError,
    PublishError,
    SignatureInUseError,
    StoreUnavailableError,
    TaskNotRegisteredError,
    TaskTimeoutError,
)
from mageflow.flows import identifiers as idents
from mageflow.flows import lease, observe
from mageflow.flows.build import WorkflowBuilder
from mageflow.flows.handles import Signature
from mageflow.flows.messages import (
    build_input,
    dumps,
    error_dict,
    error_json,
    to_json,
    to_jsonable,
)
from mageflow.flows.publish import publish
from mageflow.flows.recorded import until_recorded
from mageflow.models.context import TaskContext
from mageflow.models.options import Options
from mageflow.models.retry import Backoff
from mageflow.models.return_value import return_value_field
from mageflow.models.signatures import check_name

if TYPE_CHECKING:
    from mageflow.engine import Publish, Transition
    from mageflow.flows.runtime import Runtime

log = logging.getLogger("mageflow.worker")

_current: ContextVar[TaskContext | None] = ContextVar("mageflow_current_task", default=None)


def current_task() -> TaskContext:
    """The signature the calling task runs for: key, task name, ``task_identifiers``,
    attempt, run id. Works in async and sync tasks (and what they spawn with the context).
    Raises :class:`NotInTaskError` outside the user code of a MageFlow delivery."""
    ctx = _current.get()
    if ctx is None:
        raise NotInTaskError(
            "mageflow.current_task() was called outside a running MageFlow task; call it "
            "from the code of an @mf.task function run by a signature (a task called "
            "directly, not through MageFlow, has no signature)"
        )
    return ctx


@contextlib.contextmanager
def _running(ctx: TaskContext) -> Iterator[None]:
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


@dataclass(frozen=True)
class RegisteredTask:
    name: str
    fn: Callable[..., Any]
    input_model: type[BaseModel] | None
    retries: int
    timeout: float | None
    options: Options = field(default_factory=Options)
    """Dispatch defaults (priority, delay) every signature of this task starts from."""
    backoff: Backoff | None = None

    @property
    def return_field(self) -> str:
        return return_value_field(self.input_model)

    async def call_with_timeout(self, data: dict[str, Any]) -> Any:
        """Run the user code under the task's ``timeout``. The core enforces it, so a
        timeout is an ordinary failure recorded like any other; adapters only set their
        task manager's own timeout above it, as a backstop for a hung worker."""
        if self.timeout is None:
            return await self.call(data)
        try:
            return await asyncio.wait_for(self.call(data), self.timeout)
        except asyncio.TimeoutError as exc:
            raise TaskTimeoutError(
                f"task {self.name!r} ran longer than its timeout of {self.timeout} s"
            ) from exc

    async def call(self, data: dict[str, Any]) -> Any:
        arg: Any = data
        if self.input_model is not None:
            try:
                arg = self.input_model.model_validate(data)
            except ValidationError as exc:
                fields = ", ".join(
                    ".".join(str(p) for p in e["loc"]) or "<root>" for e in exc.errors()
                )
                raise InvalidTaskInputError(
                    f"input of task {self.name!r} is invalid (fields: {fields}): {exc}"
                ) from exc
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(arg)
        result = await asyncio.to_thread(self.fn, arg)
        if inspect.isawaitable(result):
            return await result
        return result


def _result(task: RegisteredTask, result: Any) -> tuple[Any, str]:
    """The result as JSON data (returned to the task manager) and as stored text."""
    what = f"the result of task {task.name!r}"
    data = to_jsonable(result, what)
    return data, dumps(data, what)


async def _publish_after_finish(rt: Runtime, key: str, publishes: list[Publish]) -> None:
    """Publish what a finish dispatched. A failure here is not the task's failure: the
    dispatches are recorded and the reconciler re-sends them."""
    try:
        await publish(rt, publishes)
    except (PublishError, StoreUnavailableError) as exc:
        log.error("%s finished, but publishing what follows failed: %s", key, exc)


async def run_task(mf: Runtime, task: RegisteredTask, payload: JSON, ctx: RunContext) -> JSON:
    """What a worker does with one delivery: one start transition, the user code, one
    finish transition, then the publishes that finish implies. A store outage at start or
    finish is waited out (:func:`until_recorded`): the delivery is never acknowledged
    before both are recorded."""
    key = ctx.headers.get(HEADER_KEY)
    if key is None:
        # Invoked outside MageFlow (e.g. kicked by hand): plain call, no orchestration.
        plain = payload if isinstance(payload, dict) else {}
        return _result(task, await task.call(plain))[0]
    first = _first_delivery(mf, task.name, key, payload, ctx, task.return_field)
    if first is not None:  # its start is recorded later, as of now
        began = int(time.time() * 1000)
        async with lease.renewed(mf, key, ctx.run_id, unstarted=task.name, began_ms=began):
            return await _run_started(
                mf, task, key, ctx, *first, first_run=ctx.run_id, began_ms=began
            )
    started = await _start(mf, task.name, key, payload, ctx, task.return_field)
    if started is None:
        return None
    async with lease.renewed(mf, key, ctx.run_id):
        return await _run_started(mf, task, key, ctx, *started)


FOLD = "fold"
"""The payload field of a message the engine appended itself on a first dispatch: what
its start transition would reply, and when it was dispatched (see ``FIRST DELIVERIES``
in the engine script)."""


def _first_delivery(
    mf: Runtime, task_name: str, key: str, payload: JSON, ctx: RunContext, ret: str
) -> tuple[dict[str, Any], StartOutcome] | None:
    """The input and start outcome of a delivery that may run before its start is
    recorded (then the finish records both in one call), or ``None`` for the usual start
    transition. Only a first delivery (the adapter says so) of a first dispatch, as the
    task it was dispatched to, received well within the time after which the reconciler
    could have sent a second copy (half of ``resend_after``)."""
    fold = payload.pop(FOLD, None) if isinstance(payload, dict) else None
    if not isinstance(fold, dict) or not ctx.first_delivery or ctx.attempt != 1:
        return None
    kwargs, identifiers, sent_ms = fold.get("kw"), fold.get("ids"), fold.get("t")
    if (
        fold.get("task") != task_name
        or not isinstance(kwargs, dict)
        or not isinstance(identifiers, dict)
        or not isinstance(sent_ms, int)
        or _malformed(task_name, key, payload) is not None
        or time.time() * 1000 - sent_ms >= mf.engine.resend_after * 500
    ):
        return None
    assert isinstance(payload, dict)
    mf.start_reconciler()
    outcome = StartOutcome("run", kwargs=kwargs, attempt=1, identifiers=identifiers)
    return build_input(payload, kwargs, ret), outcome


async def _run_started(
    mf: Runtime,
    task: RegisteredTask,
    key: str,
    ctx: RunContext,
    data: dict[str, Any],
    outcome: StartOutcome,
    *,
    first_run: str | None = None,
    began_ms: int | None = None,
) -> JSON:
    """The user code of a delivery the start transition let run, then its finish
    (``first_run``: a first delivery run before its start, which the finish takes, as of
    ``began_ms``)."""
    me = TaskContext(
        key=key,
        task_name=task.name,
        identifiers=outcome.identifiers,
        attempt=outcome.attempt,
        run_id=ctx.run_id,
    )
    observe.emit(
        "mageflow_task_started",
        key,
        task_name=task.name,
        attempt=ctx.attempt,
        run_id=ctx.run_id,
    )
    continuation: Continuation | None = None
    try:
        with _running(me):
            value = await task.call_with_timeout(data)
        if isinstance(value, Signature):
            continuation = await Continuation.stored(mf, key, value)
            result, result_json = None, ""
        else:
            result, result_json = _result(task, value)
    except (
        InvalidTaskInputError,
        PayloadNotSerializableError,
        NonRetryableError,
        SignatureInUseError,
    ) as exc:
        await _fail(mf, task.name, key, exc, data, ctx, first_run, began_ms)
        raise NonRetryableError(str(exc)) from exc
    except Exception as exc:
        if not ctx.is_final_attempt:
            if first_run is not None and not await _take_start(mf, task.name, key, ctx, began_ms):
                raise NonRetryableError(f"{key}: not this run's task; no retry") from exc
            log.warning(
                "%s (%s) attempt %d failed: %r; will retry", key, task.name, ctx.attempt, exc
            )
            observe.emit(
                "mageflow_task_retried",
                key,
                task_name=task.name,
                attempt=ctx.attempt,
                run_id=ctx.run_id,
                error=error_dict(exc),
            )
            await lease.release(mf, key, ctx.run_id, lease.retry_hold(task.backoff, ctx.attempt))
            raise
        await _fail(mf, task.name, key, exc, data, ctx, first_run, began_ms)
        raise
    if continuation is not None:
        if first_run is not None and not await _take_start(mf, task.name, key, ctx, began_ms):
            return None
        transition = await continuation.start(task.name, data)
    else:
        transition = await _record_finish(
            mf, task.name, key, ctx, True, result_json, "{}", first_run, began_ms
        )
        if first_run is not None and transition.duplicate:
            _log_discarded(key, task.name, first_run)
    faults.check(faults.AFTER_FINISH, task.name)
    await _publish_after_finish(mf, key, transition.publishes)
    observe.emit(
        "mageflow_task_succeeded",
        key,
        task_name=task.name,
        attempt=ctx.attempt,
        run_id=ctx.run_id,
        status="continued" if continuation else "done",
    )
    observe.store_events(transition.events)
    return result


@dataclass
class Continuation:
    """A workflow a task returned to run in its place, copied under the task's node (its
    records are inert until the ``continue`` transition starts it)."""

    mf: Runtime
    key: str
    root_sid: str
    builder: WorkflowBuilder

    @classmethod
    async def stored(cls, mf: Runtime, key: str, returned: Signature) -> Continuation:
        """Move ``returned`` (a signature, chain, swarm ... built and not run) under task
        ``key``. Raises :class:`SignatureInUseError` when it already ran or belongs to
        another workflow."""
        wf, sid = split_key(key)
        root_sid = f"{sid}.c{secrets.token_hex(4)}"  # a copy of this run never collides
        (layout,) = await mf.store.read(wf, [F.LAYOUT])
        builder = WorkflowBuilder(mf, wf, packed=layout == F.PACKED)
        await builder.task_like(root_sid, returned, parent=sid)
        await mf.store.write(
            wf, builder.fields, builder.lists, identified=idents.to_index(wf, builder.fields)
        )
        return cls(mf, key, root_sid, builder)

    async def start(self, task_name: str, data: dict[str, Any]) -> Transition:
        """The one transition: the task's node now waits for the workflow, which starts."""
        original = _input_json(data)
        transition = await until_recorded(
            "finish",
            task_name,
            self.key,
            lambda: self.mf.engine.continue_with(self.key, self.root_sid, original),
        )
        await self.builder.drop_moved()
        return transition


async def fail_unregistered(mf: Runtime, payload: JSON, ctx: RunContext) -> None:
    """A delivery of ``ctx.task_name``, a task no ``@mf.task`` of this worker registered:
    fail its node with :class:`TaskNotRegisteredError` (error callbacks fire), then raise
    :class:`NonRetryableError`. It goes through the same start transition as any delivery,
    so a duplicate is not failed twice and a held or canceled workflow is left alone. A
    message that MageFlow did not send is only logged."""
    exc = TaskNotRegisteredError(ctx.task_name, mf.tasks)
    key = ctx.headers.get(HEADER_KEY)
    if key is None:
        log.warning("a message for an unknown task, not sent by MageFlow, ignored: %s", exc)
        return
    started = await _start(mf, ctx.task_name, key, payload, ctx, return_value_field(None))
    if started is None:
        return
    data, _ = started
    log.error("%s (%s) failed: %s", key, ctx.task_name, exc)
    await _fail(mf, ctx.task_name, key, exc, data, ctx)
    raise NonRetryableError(str(exc)) from exc


def _malformed(task_name: str, key: object, payload: JSON) -> str | None:
    """Why a delivery carrying a key header cannot be MageFlow's, or ``None``."""
    try:
        check_name(task_name, "its task name")
    except InvalidNameError as exc:
        return str(exc)
    if not isinstance(payload, dict):
        return f"its payload is a {type(payload).__name__}, not an object"
    try:
        split_key(key)  # type: ignore[arg-type]  # checked there: any header value
    except InvalidKeyError as exc:
        return str(exc)
    return None


async def _start(
    mf: Runtime, task_name: str, key: str, payload: JSON, ctx: RunContext, ret: str
) -> tuple[dict[str, Any], StartOutcome] | None:
    """The start transition of a delivery: the task's input and the engine's outcome if
    it is to run now; ``None`` if it re-issued what an already finished run owed, is a
    duplicate, held or dropped, or is not a delivery of that node of this task (malformed,
    or naming another task than the node's: dropped with a warning, nothing changes).
    ``ret`` is the input field that receives the previous step's result."""
    why = _malformed(task_name, key, payload)
    if why is not None:  # repr: the log shows no raw text of the message
        log.warning("a malformed delivery of %r (%r) dropped: %s", task_name, key, why)
        return None
    assert isinstance(payload, dict)
    mf.start_reconciler()
    outcome = await until_recorded(
        "start", task_name, key, lambda: mf.engine.start(key, ctx.run_id, task_name, mf.lease)
    )
    if outcome.action == "leased":
        log.info("%s (%s): run %s is running elsewhere; waiting", key, task_name, ctx.run_id)
    while outcome.action == "leased":
        # Hold the delivery: if the running attempt's worker died, its lease lapses and
        # this copy takes over; if that attempt finishes, this copy is a duplicate.
        await asyncio.sleep(lease.wait_for_lease(outcome.lease_until_ms, mf.lease))
        outcome = await until_recorded(
            "start",
            task_name,
            key,
            lambda: mf.engine.start(key, ctx.run_id, task_name, mf.lease),
        )
    if outcome.action == "mismatch":
        log.warning(
            "a delivery of %s as task %r dropped: that signature is of task %r (a forged or "
            "misrouted message)",
            key,
            task_name,
            outcome.node_task,
        )
        return None
    if outcome.action == "redo":
        log.info(
            "redelivered %s (%s): re-issuing %d publish(es)", key, task_name, len(outcome.owed)
        )
        await _publish_after_finish(mf, key, outcome.owed)
        return None
    if outcome.action != "run":
        log.info("delivery of %s (%s) skipped: %s", key, task_name, outcome.action)
        return None
    return build_input(payload, outcome.kwargs, ret), outcome


def _input_json(data: dict[str, Any]) -> str:
    """The input a task ran with, as the JSON its error callbacks receive (``{}`` when it
    cannot be encoded)."""
    try:
        return to_json(data, "input")
    except PayloadNotSerializableError:
        return "{}"


async def _take_start(
    mf: Runtime, task_name: str, key: str, ctx: RunContext, began_ms: int | None
) -> bool:
    """Record the start of a first delivery that ran without one (its user code began at
    ``began_ms``), before what needs it (a retry's attempt count, a continuation).
    ``False``: not this run's task."""
    outcome = await until_recorded(
        "start",
        task_name,
        key,
        lambda: mf.engine.start(key, ctx.run_id, task_name, mf.lease, began_ms=began_ms),
    )
    if outcome.action in ("run", "leased"):  # leased: this run took it already
        return True
    _log_discarded(key, task_name, ctx.run_id)
    return False


async def _record_finish(
    mf: Runtime,
    task_name: str,
    key: str,
    ctx: RunContext,
    ok: bool,
    value: str,
    original: str,
    first_run: str | None,
    began_ms: int | None = None,
) -> Transition:
    """The finish transition, waited out through store outages. With stream delivery on
    (the broker's streams on the store's server) it also acknowledges the delivery's
    stream entry, and the adapter is told it must not again."""
    entry = ctx.entry
    if entry is None or entry.acknowledged or not mf.engine.delivery:
        entry = None
    ack = None if entry is None else (entry.stream, entry.group, entry.entry_id)
    transition = await until_recorded(
        "finish",
        task_name,
        key,
        lambda: mf.engine.finish(
            key, ok, value, original, first_run=first_run, began_ms=began_ms, ack=ack
        ),
    )
    if entry is not None:
        entry.acknowledged = True
    return transition


def _log_discarded(key: str, task_name: str, run_id: str) -> None:
    log.warning(
        "%s (%s): run %s ran before its start was recorded, and the task was no longer "
        "its to run (a copy ran, or the workflow was canceled); its outcome is discarded",
        key,
        task_name,
        run_id,
    )


async def _fail(
    mf: Runtime,
    task_name: str,
    key: str,
    exc: BaseException,
    data: dict[str, Any],
    ctx: RunContext,
    first_run: str | None = None,
    began_ms: int | None = None,
) -> None:
    log.error("%s (%s) failed for good at attempt %d: %r", key, task_name, ctx.attempt, exc)
    original = _input_json(data)
    error = error_json(exc)
    transition = await _record_finish(
        mf, task_name, key, ctx, False, error, original, first_run, began_ms
    )
    faults.check(faults.AFTER_FINISH, task_name)
    await _publish_after_finish(mf, key, transition.publishes)
    observe.emit(
        "mageflow_task_failed",
        key,
        task_name=task_name,
        attempt=ctx.attempt,
        run_id=ctx.run_id,
        status="failed",
        error=error_dict(exc),
    )
    observe.store_events(transition.events)
