"""An in-process, Hatchet-compatible engine for tests: :class:`HatchetTestEngine`.

The real hatchet-sdk (pinned ``>=1.42,<1.44``) client *and* worker run against it end to
end, over gRPC and HTTP on 127.0.0.1 (ephemeral ports), with no Docker and no Hatchet
server::

    from mageflow_hatchet_testengine import HatchetTestEngine, WorkerProcess

    with HatchetTestEngine() as engine:
        with WorkerProcess(engine, "my_worker.py") as worker:   # a subprocess
            worker.wait_registered("my-worker")
            result = await my_task.aio_run(...)          # my_task built on engine.hatchet()
        assert engine.runs("my-task")[0].task.attempts[0].outcome == "COMPLETED"

For pytest, add ``pytest_plugins = ["mageflow_hatchet_testengine.pytest_plugin"]`` to the
root ``conftest.py`` (fixtures ``hatchet_engine`` and ``hatchet_client``).

Pitfalls:

- A Hatchet worker must run as a subprocess (signal handlers, its own event loop, a
  spawn-mode listener child): its script needs ``if __name__ == "__main__":`` and must be
  importable by path. :class:`WorkerProcess` runs it in its own process group, from an
  empty working directory, with :meth:`HatchetTestEngine.client_env`, and kills the group
  on teardown.
- The SDK reads ``.env``, ``.env.hatchet``, ``.env.dev`` and ``.env.local`` from the cwd:
  in-process clients should use :meth:`HatchetTestEngine.hatchet` /
  :meth:`~HatchetTestEngine.client_config`; subprocesses a clean cwd or explicit env.
- A Hatchet client binds its result listener to the first event loop that awaits a
  result: use one client per event loop (per test).

What the engine implements (anything else answers gRPC ``UNIMPLEMENTED`` / HTTP 501):
standalone tasks and DAG workflows; retries (same task run id, ``retry_count + 1``),
``NonRetryableException``, ``retry_after_ms`` and backoff; execution and schedule
timeouts; worker slots; priorities then FIFO; cancel (``CANCEL_STEP_RUN`` to the worker);
worker pause; reassignment when a worker's heartbeats stop or it unsubscribes; results
over ``SubscribeToWorkflowRuns`` and ``GetRunDetails``; scheduled runs; logs. Workflows
using concurrency, rate limits, conditions, durable or batch tasks, on-failure tasks,
event or cron triggers, sticky or worker labels are refused at registration.
"""

from __future__ import annotations

from mageflow_hatchet_testengine.engine import HatchetTestEngine
from mageflow_hatchet_testengine.errors import (
    EngineError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedError,
)
from mageflow_hatchet_testengine.snapshots import (
    AttemptInfo,
    LogLine,
    RunInfo,
    TaskEventInfo,
    TaskRunInfo,
    WorkerInfo,
)
from mageflow_hatchet_testengine.worker_process import WorkerProcess

__all__ = [
    "AttemptInfo",
    "EngineError",
    "HatchetTestEngine",
    "InvalidRequestError",
    "LogLine",
    "NotFoundError",
    "RunInfo",
    "TaskEventInfo",
    "TaskRunInfo",
    "UnsupportedError",
    "WorkerInfo",
    "WorkerProcess",
]
