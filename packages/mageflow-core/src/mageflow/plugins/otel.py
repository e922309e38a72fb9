"""OpenTelemetry spans for MageFlow workflows (``pip install 'mageflow-core[otel]'``).

    from mageflow.plugins import otel
    otel.install()                      # global tracer provider, or install(provider)

One span per task attempt (in the worker that ran it) and one per chain, swarm and
workflow, all in one trace per workflow. Processes never exchange trace context:
identifiers are derived from workflow keys (trace id from the workflow id, span id of a
chain/swarm from its key), so a task's span names its chain or swarm as parent even when
that span is emitted later, by another worker. Callbacks are children of the workflow
span and carry ``mageflow.callback_of``.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode, TraceFlags

from mageflow.engine import split_key
from mageflow.models.events import WorkflowEvent
from mageflow.plugins.hookspecs import hookimpl
from mageflow.plugins.manager import register_observer, unregister_observer

_forced: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "mageflow_otel_ids", default=None
)
_CALLBACK = re.compile(r"^[se]\d+$")


def _trace_id(workflow_key: str) -> int:
    wf, _ = split_key(workflow_key)
    return int(hashlib.sha256(wf.encode()).hexdigest()[:32], 16) or 1


def _span_id(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) or 1


class _KeyedIds(IdGenerator):
    """Delegates to the provider's generator unless a span's ids are derived from a key."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced else self.inner.generate_trace_id()


class OpenTelemetryObserver:
    """Observer hooks that turn workflow events into spans."""

    def __init__(self, provider: TracerProvider) -> None:
        if not isinstance(provider.id_generator, _KeyedIds):
            provider.id_generator = _KeyedIds(provider.id_generator)  # type: ignore[assignment]
        self.tracer = provider.get_tracer("mageflow")
        self._open: dict[tuple[str, str | None, int | None], Span] = {}

    def _parent(self, key: str, workflow: str, *, attempt: bool) -> tuple[Any, dict[str, str]]:
        """The context of the span's parent, and extra attributes. A task attempt's parent
        is its chain or swarm (the workflow span for callbacks and root tasks); a chain's
        or swarm's is the node containing it; the workflow span has none."""
        wf, sid = split_key(key)
        head, _, last = sid.rpartition(".")
        attrs: dict[str, str] = {}
        if not head:
            if not attempt:
                return None, attrs
            parent_key = workflow
        elif _CALLBACK.match(last):
            attrs["mageflow.callback_of"] = f"{wf}.{head}"
            parent_key = workflow
        else:
            parent_key = f"{wf}.{head}"
        ctx = SpanContext(
            trace_id=_trace_id(workflow),
            span_id=_span_id(parent_key),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(ctx)), attrs

    @staticmethod
    def _attributes(event: WorkflowEvent) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "mageflow.key": event.key,
            "mageflow.workflow": event.workflow,
            "mageflow.kind": event.kind,
        }
        for name, value in (
            ("mageflow.task", event.task_name),
            ("mageflow.parent", event.parent),
            ("mageflow.attempt", event.attempt),
            ("mageflow.run_id", event.run_id),
        ):
            if value is not None:
                attrs[name] = value
        return attrs

    # -- task attempts ----------------------------------------------------------------
    @hookimpl
    def mageflow_task_started(self, event: WorkflowEvent) -> None:
        parent, extra = self._parent(event.key, event.workflow, attempt=True)
        span = self.tracer.start_span(
            event.task_name or event.key,
            context=parent,
            attributes={**self._attributes(event), **extra},
            start_time=int(event.at * 1e9),
        )
        self._open[(event.key, event.run_id, event.attempt)] = span

    def _end(self, event: WorkflowEvent, status: str) -> None:
        span = self._open.pop((event.key, event.run_id, event.attempt), None)
        if span is None:
            return
        span.set_attribute("mageflow.status", status)
        if event.error:
            span.set_status(
                Status(StatusCode.ERROR, f"{event.error.get('type')}: {event.error.get('message')}")
            )
            span.set_attribute("mageflow.error.type", str(event.error.get("type")))
        span.end(end_time=int(event.at * 1e9))

    @hookimpl
    def mageflow_task_succeeded(self, event: WorkflowEvent) -> None:
        self._end(event, "done")

    @hookimpl
    def mageflow_task_failed(self, event: WorkflowEvent) -> None:
        self._end(event, "failed")

    @hookimpl
    def mageflow_task_retried(self, event: WorkflowEvent) -> None:
        self._end(event, "retried")

    # -- chains, swarms, workflows ------------------------------------------------------
    @hookimpl
    def mageflow_workflow_finished(self, event: WorkflowEvent) -> None:
        parent, extra = self._parent(event.key, event.workflow, attempt=False)
        name = f"{event.kind} {event.key}" if event.kind != "task" else f"workflow {event.key}"
        token = _forced.set((_trace_id(event.workflow), _span_id(event.key)))
        try:
            span = self.tracer.start_span(
                name,
                context=parent,
                attributes={
                    **self._attributes(event),
                    **extra,
                    "mageflow.status": event.status or "",
                },
                start_time=int((event.started_at or event.at) * 1e9),
            )
        finally:
            _forced.reset(token)
        if event.status == "failed":
            span.set_status(Status(StatusCode.ERROR, "workflow failed"))
        span.end(end_time=int(event.at * 1e9))


def install(provider: TracerProvider | None = None) -> OpenTelemetryObserver:
    """Start emitting spans to ``provider`` (default: the global tracer provider, which
    must be an SDK ``TracerProvider``). Returns the observer; see :func:`uninstall`."""
    provider = provider or trace.get_tracer_provider()  # type: ignore[assignment]
    if not isinstance(provider, TracerProvider):
        raise TypeError("mageflow.plugins.otel needs an opentelemetry-sdk TracerProvider")
    observer = OpenTelemetryObserver(provider)
    register_observer(observer)
    return observer


def uninstall(observer: OpenTelemetryObserver) -> None:
    unregister_observer(observer)
