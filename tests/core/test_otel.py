"""The OpenTelemetry plugin: one span per task with workflow attributes, and parent/child
links for chains and swarms, checked with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.plugins import otel


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    observer = otel.install(provider)
    yield exp
    otel.uninstall(observer)


def by_key(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(str((span.attributes or {})["mageflow.key"]), []).append(span)
    return out


async def test_spans_for_chain_with_nested_swarm(exporter: InMemorySpanExporter) -> None:
    mf = Mageflow(backend=LocalBackend(workers=2), redis_url="memory://")

    @mf.task("step")
    async def step(msg: dict[str, Any]) -> int:
        return 1

    @mf.task("shaky", retries=1)
    async def shaky(msg: dict[str, Any]) -> int:
        if msg.get("mageflow_results") is not None and not getattr(shaky, "failed", False):
            shaky.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("first attempt fails")
        return 2

    inner = await mf.swarm(
        ["step", "step"], config=SwarmConfig(max_concurrency=1), is_swarm_closed=True
    )
    wf = await mf.chain(["step", inner, "shaky"], success="step", name="traced")
    await wf.aio_run({}, timeout=5)
    assert isinstance(mf.backend, LocalBackend)
    await mf.backend.join(5)
    spans = by_key(exporter.get_finished_spans())

    # one trace for the whole workflow
    trace_ids = {s.context.trace_id for group in spans.values() for s in group}
    assert len(trace_ids) == 1
    (root,) = spans[wf.key]
    assert root.parent is None
    assert root.name == f"chain {wf.key}"
    (swarm_span,) = spans[inner.key]
    assert swarm_span.parent is not None
    assert swarm_span.parent.span_id == root.context.span_id

    steps = (await wf.get_state()).children
    (first,) = spans[steps[0]]
    assert first.parent is not None and first.parent.span_id == root.context.span_id
    assert first.attributes is not None
    assert first.attributes["mageflow.workflow"] == wf.key
    assert first.attributes["mageflow.task"] == "step"
    for item in (await inner.get_state()).children:
        (item_span,) = spans[item]
        assert item_span.parent is not None
        assert item_span.parent.span_id == swarm_span.context.span_id

    attempts = spans[steps[2]]  # shaky: a retried attempt, then a successful one
    assert sorted(int((s.attributes or {})["mageflow.attempt"]) for s in attempts) == [1, 2]
    assert {str((s.attributes or {})["mageflow.status"]) for s in attempts} == {"retried", "done"}

    (callback,) = [s for k, g in spans.items() for s in g if k.endswith(".s0")]
    assert callback.attributes is not None
    assert callback.attributes["mageflow.callback_of"] == wf.key
    assert callback.parent is not None and callback.parent.span_id == root.context.span_id
    await mf.aclose()
