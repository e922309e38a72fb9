"""Prometheus metrics as an observer plugin (``pip install 'mageflow-core[metrics]'``).

Per task name: attempts started, succeeded, failed (final) and retried, and a histogram of
attempt durations; per running swarm: items running and queued, refreshed from the store
when one of its items finishes (one small read, at most one in flight per swarm). Each
process counts what happens in it: scrape every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from mageflow.engine import fields as F
from mageflow.engine import split_key
from mageflow.errors import ConfigurationError, MageflowError
from mageflow.models.events import WorkflowEvent
from mageflow.plugins.hookspecs import hookimpl
from mageflow.plugins.manager import register_observer
from mageflow.store.base import StateStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

try:
    import prometheus_client as prom
except ImportError:  # pragma: no cover - exercised without the extra installed
    prom = None  # type: ignore[assignment]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MAX_TRACKED = 100_000
"""Attempts whose start is remembered for their duration (older ones are forgotten)."""


def _require() -> None:
    if prom is None:
        raise ConfigurationError(
            "Prometheus metrics need prometheus-client: pip install 'mageflow-core[metrics]'"
        )


FINISHED_KEPT = 10_000


class PrometheusObserver:
    """Observer hooks feeding Prometheus metrics in :attr:`registry` (its own, unless one
    is given). ``store`` is read for the swarm gauges (``None``: no swarm gauges)."""

    def __init__(
        self, store: StateStore | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        _require()
        self.store = store
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        by_task = ["task"]

        def counter(name: str, doc: str) -> prom.Counter:
            return prom.Counter(name, doc, by_task, registry=self.registry)

        self.started = counter("mageflow_task_started", "Task attempts started.")
        self.succeeded = counter("mageflow_task_succeeded", "Tasks that returned.")
        self.failed = counter("mageflow_task_failed", "Tasks failed after the final attempt.")
        self.retried = counter("mageflow_task_retried", "Attempts failed and retried.")
        self.duration = prom.Histogram(
            "mageflow_task_duration_seconds",
            "Duration of task attempts.",
            by_task,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.swarm_running = prom.Gauge(
            "mageflow_swarm_running", "Items of a swarm running.", ["swarm"], registry=self.registry
        )
        self.swarm_queued = prom.Gauge(
            "mageflow_swarm_queued",
            "Items of a swarm queued for a free slot.",
            ["swarm"],
            registry=self.registry,
        )
        self._began: dict[tuple[str, str | None], float] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._finished: dict[str, None] = {}
        """Swarms seen finishing (the newest FINISHED_KEPT): a refresh that read the swarm
        before it finished must not bring its gauges back."""

    # -- tasks ----------------------------------------------------------------------------
    @hookimpl
    def mageflow_task_started(self, event: WorkflowEvent) -> None:
        self.started.labels(event.task_name or "?").inc()
        if len(self._began) >= MAX_TRACKED:
            self._began.clear()
        self._began[(event.key, event.run_id)] = time.monotonic()

    def _ended(self, event: WorkflowEvent) -> None:
        began = self._began.pop((event.key, event.run_id), None)
        if began is not None:
            self.duration.labels(event.task_name or "?").observe(time.monotonic() - began)

    @hookimpl
    def mageflow_task_succeeded(self, event: WorkflowEvent) -> None:
        self.succeeded.labels(event.task_name or "?").inc()
        self._ended(event)

    @hookimpl
    def mageflow_task_failed(self, event: WorkflowEvent) -> None:
        self.failed.labels(event.task_name or "?").inc()
        self._ended(event)

    @hookimpl
    def mageflow_task_retried(self, event: WorkflowEvent) -> None:
        self.retried.labels(event.task_name or "?").inc()
        self._ended(event)

    # -- swarms ---------------------------------------------------------------------------
    @hookimpl
    def mageflow_swarm_item_done(self, event: WorkflowEvent) -> None:
        if self.store is None:
            return
        key = event.key
        if key in self._refreshing:
            self._again.add(key)  # refresh once more when the one in flight ends
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refreshing[key] = loop.create_task(self._refresh(key))

    @hookimpl
    def mageflow_workflow_finished(self, event: WorkflowEvent) -> None:
        if event.kind == "swarm":
            self._finished[event.key] = None
            if len(self._finished) > FINISHED_KEPT:
                del self._finished[next(iter(self._finished))]
            self._forget(event.key)

    def _forget(self, key: str) -> None:
        for gauge in (self.swarm_running, self.swarm_queued):
            with contextlib.suppress(KeyError):
                gauge.remove(key)

    async def _refresh(self, key: str) -> None:
        assert self.store is not None
        try:
            while True:
                self._again.discard(key)
                wf, sid = split_key(key)
                names = (F.STATUS, F.N_RUNNING, F.N_PAUSED, F.LAZY, F.QEND, F.SCANNED, F.AHEAD)
                status, slots, paused, *cursor = await F.read_node(self.store, wf, sid, names)
                if status in F.TERMINAL:
                    self._forget(key)
                    return
                queued = await self.store.count(wf, F.aux(F.QUEUE, sid))
                queued += F.lazily_queued(*cursor)
                if key in self._finished:  # it finished while this refresh read it
                    return
                self.swarm_running.labels(key).set(max(int(slots or 0) - int(paused or 0), 0))
                self.swarm_queued.labels(key).set(queued)
                if key not in self._again:
                    return
        except MageflowError:
            return  # the store is away: the next item's end refreshes again
        finally:
            self._refreshing.pop(key, None)


def install(store: StateStore | None = None) -> PrometheusObserver:
    """Register a :class:`PrometheusObserver` for this process and return it."""
    observer = PrometheusObserver(store)
    register_observer(observer, name=f"mageflow-metrics-{id(observer)}")
    return observer


def serve_metrics(app: object, port: int, addr: str = "0.0.0.0") -> PrometheusObserver:
    """Install the observer for ``app`` (a :class:`~mageflow.Mageflow`: its store feeds
    the swarm gauges) and serve ``/metrics`` on ``addr:port`` from a thread."""
    _require()
    store = getattr(app, "store", None)
    observer = install(store if isinstance(store, StateStore) else None)
    try:
        prom.start_http_server(port, addr=addr, registry=observer.registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {exc}") from None
    return observer
