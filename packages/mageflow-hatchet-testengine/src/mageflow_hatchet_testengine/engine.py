"""``HatchetTestEngine``: an in-process, Hatchet-compatible engine for tests.

The real hatchet-sdk client and worker talk to it over gRPC and HTTP on ``127.0.0.1``
(ephemeral ports), so both SDK sides run unmodified, with no Docker and no Hatchet server.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from mageflow_hatchet_testengine.admin import AdminService, WorkflowService
from mageflow_hatchet_testengine.auth import TokenInterceptor
from mageflow_hatchet_testengine.contracts import (
    V1DispatcherServicer,
    add_AdminServiceServicer_to_server,
    add_DispatcherServicer_to_server,
    add_EventsServiceServicer_to_server,
    add_V1DispatcherServicer_to_server,
    add_WorkflowServiceServicer_to_server,
)
from mageflow_hatchet_testengine.dispatcher import DispatcherService
from mageflow_hatchet_testengine.events import EventsService
from mageflow_hatchet_testengine.rest import RestServer
from mageflow_hatchet_testengine.scheduler import Scheduler
from mageflow_hatchet_testengine.snapshots import LogLine, RunInfo, WorkerInfo
from mageflow_hatchet_testengine.token import make_token

if TYPE_CHECKING:
    from hatchet_sdk import ClientConfig, Hatchet

ENGINE_VERSION = "v0.120.0"
"""Reported by ``GetVersion``. SDK 1.43 takes its legacy path below v0.78.23 and only sends
``retry_after_ms`` from v0.111.0 on."""

HOST = "127.0.0.1"


class HatchetTestEngine:
    """An in-process Hatchet engine: a gRPC server, a small REST server and a scheduler.

    Use it as a context manager (or call :meth:`start` / :meth:`stop`). It runs in
    background threads, so it works the same from sync and async code; its ``wait_*``
    methods block, use the ``*_async`` variants inside a running event loop.

    Clients connect with :meth:`hatchet` / :meth:`client_config` (in this process) or with
    :meth:`client_env` (worker subprocesses; run them from a clean working directory, as
    the SDK also reads ``.env``, ``.env.hatchet``, ``.env.dev`` and ``.env.local`` from it).

    :param heartbeat_timeout: seconds without a worker heartbeat (the SDK sends one every
        4 s) after which the worker's in-flight task runs are re-queued on other workers.
    :param max_reassigns: how often one task run may be re-queued that way before it fails.
    :param grpc_threads: size of the gRPC thread pool; every open stream (a worker's action
        stream, a client's result subscription) holds one thread.
    :param tick_interval: seconds between timer checks (retry delays, timeouts, heartbeats).
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = 30.0,
        max_reassigns: int = 3,
        grpc_threads: int = 256,
        tick_interval: float = 0.05,
        engine_version: str = ENGINE_VERSION,
        tenant_id: str | None = None,
    ) -> None:
        self.tenant_id: str = tenant_id or str(uuid.uuid4())
        self._engine_version = engine_version
        self._grpc_threads = grpc_threads
        self._tick_interval = tick_interval
        self._scheduler = Scheduler(
            self.tenant_id, heartbeat_timeout=heartbeat_timeout, max_reassigns=max_reassigns
        )
        self._grpc_server: grpc.Server | None = None
        self._rest: RestServer | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.token: str = ""
        self.grpc_address: str = ""
        self.rest_url: str = ""

    # -------------------------------------------------------------- lifecycle

    def start(self) -> HatchetTestEngine:
        """Bind the ports, build the token and start serving. Returns ``self``."""
        if self._grpc_server is not None:
            raise RuntimeError("engine already started")
        self._stopping.clear()
        rest = RestServer(self._scheduler, "", HOST)
        server = grpc.server(
            ThreadPoolExecutor(
                max_workers=self._grpc_threads, thread_name_prefix="hatchet-test-engine-grpc"
            ),
            interceptors=[TokenInterceptor(lambda: self.token)],
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_DispatcherServicer_to_server(
            DispatcherService(self._scheduler, self._engine_version), server
        )
        add_AdminServiceServicer_to_server(AdminService(self._scheduler), server)
        add_WorkflowServiceServicer_to_server(WorkflowService(self._scheduler), server)
        add_EventsServiceServicer_to_server(EventsService(self._scheduler), server)
        add_V1DispatcherServicer_to_server(V1DispatcherServicer(), server)
        grpc_port = server.add_insecure_port(f"{HOST}:0")
        self.grpc_address = f"{HOST}:{grpc_port}"
        self.rest_url = f"http://{HOST}:{rest.port}"
        self.token = make_token(
            tenant_id=self.tenant_id, server_url=self.rest_url, grpc_address=self.grpc_address
        )
        rest.set_token(self.token)
        server.start()
        rest.start()
        self._grpc_server = server
        self._rest = rest
        self._ticker = threading.Thread(
            target=self._tick_loop, name="hatchet-test-engine-ticker", daemon=True
        )
        self._ticker.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; open streams are cancelled. Safe to call twice."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait(timeout=grace + 5)
            self._grpc_server = None
        if self._rest is not None:
            self._rest.stop()
            self._rest = None

    def __enter__(self) -> HatchetTestEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self._tick_interval):
            self._scheduler.tick()

    # ---------------------------------------------------------------- clients

    def _require_started(self) -> None:
        if not self.token:
            raise RuntimeError("the engine is not started")

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a Hatchet client or worker at this engine.

        They are set explicitly (not only through the token) so that they win over any
        ``.env`` file, as environment variables take precedence over dotenv files.
        """
        self._require_started()
        return {
            "HATCHET_CLIENT_TOKEN": self.token,
            "HATCHET_CLIENT_TLS_STRATEGY": "none",
            "HATCHET_CLIENT_HOST_PORT": self.grpc_address,
            "HATCHET_CLIENT_SERVER_URL": self.rest_url,
            "HATCHET_CLIENT_TENANT_ID": self.tenant_id,
            "HATCHET_CLIENT_NAMESPACE": "",
            "HATCHET_CLIENT_WORKER_HEALTHCHECK_ENABLED": "false",
        }

    def client_config(self) -> ClientConfig:
        """A ``ClientConfig`` bound to this engine that reads no ``.env`` file."""
        from hatchet_sdk import ClientConfig
        from hatchet_sdk.config import (
            ClientTLSConfig,
            HealthcheckConfig,
            OpenTelemetryConfig,
            TenacityConfig,
        )

        self._require_started()
        return ClientConfig(
            _env_file=None,
            token=self.token,
            tenant_id=self.tenant_id,
            host_port=self.grpc_address,
            server_url=self.rest_url,
            namespace="",
            tls_config=ClientTLSConfig(_env_file=None, strategy="none", server_name=HOST),
            healthcheck=HealthcheckConfig(_env_file=None, enabled=False),
            otel=OpenTelemetryConfig(_env_file=None),
            tenacity=TenacityConfig(_env_file=None),
        )

    def hatchet(self) -> Hatchet:
        """A new Hatchet client bound to this engine.

        A Hatchet client binds its result listener to the first event loop that awaits a
        result; make one client per event loop (e.g. per test), not one per session.
        """
        from hatchet_sdk import Hatchet

        return Hatchet(config=self.client_config())

    # ------------------------------------------------------------- inspection

    def runs(self, workflow_name: str | None = None) -> list[RunInfo]:
        """Every run so far (in trigger order), optionally only those of one workflow."""
        runs = self._scheduler.runs()
        if workflow_name is not None:
            runs = [r for r in runs if r.workflow_name == workflow_name]
        return runs

    def run(self, run_id: str) -> RunInfo:
        """One run by its external id (raises ``NotFoundError`` if unknown)."""
        return self._scheduler.run(run_id)

    def workers(self) -> list[WorkerInfo]:
        """Every worker that ever registered, in registration order."""
        return self._scheduler.workers()

    def worker(self, name: str) -> WorkerInfo:
        """The most recently registered worker called ``name``."""
        matches = [w for w in self.workers() if w.name == name]
        if not matches:
            raise LookupError(f"no worker named {name!r} registered")
        return matches[-1]

    def workflows(self) -> list[str]:
        """Names of the registered workflows."""
        return self._scheduler.workflow_names()

    def logs(self, task_run_id: str | None = None) -> list[LogLine]:
        """Log lines tasks sent (all, or those of one task run), oldest first."""
        return self._scheduler.logs(task_run_id)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds; re-checked on every engine state change.

        :raises TimeoutError: it did not hold within ``timeout`` seconds.
        """
        if not self._scheduler.wait_until(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout}s")

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """:meth:`wait_until` without blocking the running event loop."""
        await asyncio.to_thread(self.wait_until, predicate, timeout)

    def wait_for_worker(self, name: str, timeout: float = 90.0) -> WorkerInfo:
        """Block until a worker called ``name`` is registered with an open action stream."""

        def ready() -> bool:
            return any(w.name == name and w.connected and not w.gone for w in self.workers())

        self.wait_until(ready, timeout)
        return self.worker(name)

    async def wait_for_worker_async(self, name: str, timeout: float = 90.0) -> WorkerInfo:
        """:meth:`wait_for_worker` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_worker, name, timeout)

    def wait_for_run(self, run_id: str, timeout: float = 30.0) -> RunInfo:
        """Block until the run is COMPLETED, FAILED or CANCELLED; returns it."""
        self.wait_until(lambda: self._scheduler.run(run_id).done, timeout)
        return self.run(run_id)

    async def wait_for_run_async(self, run_id: str, timeout: float = 30.0) -> RunInfo:
        """:meth:`wait_for_run` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_run, run_id, timeout)
