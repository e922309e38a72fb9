"""The few REST routes the SDK uses, on a stdlib threading HTTP server.

Implemented routes (all need ``Authorization: Bearer <token>``):

- ``POST  /api/v1/stable/tenants/{tenant}/tasks/cancel``  ``{"externalIds": [...]}``
- ``PATCH /api/v1/workers/{worker}``  ``{"isPaused": bool}`` (worker shutdown pauses itself)
- ``GET   /api/v1/workers/{worker}``
- ``GET   /api/v1/stable/workflow-runs/{run}`` and ``.../{run}/status``
- ``GET   /api/v1/stable/tasks/{task}``

Any other route answers ``501 Not Implemented``, as does cancelling by filter.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from mageflow_hatchet_testengine.auth import bearer_matches
from mageflow_hatchet_testengine.errors import EngineError, InvalidRequestError, UnsupportedError
from mageflow_hatchet_testengine.scheduler import Scheduler
from mageflow_hatchet_testengine.snapshots import run_status
from mageflow_hatchet_testengine.state import (
    TaskRun,
    TaskState,
    WorkerRecord,
    WorkflowRun,
    now_wall,
)

JSONBody = dict[str, Any]
_Route = Callable[["_Handler", re.Match[str], JSONBody], tuple[int, Any]]


class _Forbidden(EngineError):
    http_status = 403


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _meta(resource_id: str, created: float, updated: float | None = None) -> JSONBody:
    return {"id": resource_id, "createdAt": _iso(created), "updatedAt": _iso(updated or created)}


def _decoded(output: str | None) -> Any:
    if not output:
        return {}
    try:
        return json.loads(output)
    except ValueError:
        return {}


def _public_status(state: TaskState) -> str:
    if state == TaskState.WAITING:
        return "QUEUED"
    if state == TaskState.SKIPPED:
        return "CANCELLED"
    return str(state.value)


def _duration_ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return int((end - start) * 1000)


def task_summary(tenant_id: str, task: TaskRun) -> JSONBody:
    """A ``V1TaskSummary`` for ``task`` (call with the scheduler lock held)."""
    run = task.run
    return {
        "metadata": _meta(task.external_id, task.created_at, task.finished_at),
        "actionId": task.definition.action_id,
        "retryCount": task.retry_count,
        "attempt": task.retry_count + 1,
        "additionalMetadata": run.additional_metadata,
        "createdAt": _iso(task.created_at),
        "displayName": task.definition.readable_id,
        "duration": _duration_ms(task.started_at, task.finished_at),
        "errorMessage": task.error,
        "finishedAt": _iso(task.finished_at),
        "input": run.input,
        "numSpawnedChildren": 0,
        "output": _decoded(task.output),
        "status": _public_status(task.state),
        "startedAt": _iso(task.started_at),
        "stepId": task.definition.step_id,
        "taskExternalId": task.external_id,
        "taskId": task.numeric_id,
        "taskInsertedAt": _iso(task.created_at),
        "tenantId": tenant_id,
        "type": "DAG" if run.is_dag else "TASK",
        "workflowId": run.workflow.workflow_id,
        "workflowName": run.workflow.name,
        "workflowRunExternalId": run.external_id,
        "workflowVersionId": run.workflow.version_id,
    }


def run_details(tenant_id: str, run: WorkflowRun) -> JSONBody:
    """A ``V1WorkflowRunDetails`` for ``run`` (call with the scheduler lock held).

    ``run.output`` is the task's output for a standalone task, else ``{readable_id: output}``.
    """
    tasks = list(run.tasks.values())
    if run.is_dag:
        output: Any = {
            t.definition.readable_id: _decoded(t.output)
            for t in tasks
            if t.state == TaskState.COMPLETED
        }
    else:
        output = _decoded(tasks[0].output)
    started = [t.started_at for t in tasks if t.started_at is not None]
    errors = [t.error for t in tasks if t.error]
    by_step = {t.definition.readable_id: t.definition.step_id for t in tasks}
    shape = [
        {
            "taskExternalId": t.external_id,
            "stepId": t.definition.step_id,
            "childrenStepIds": [
                by_step[c.definition.readable_id]
                for c in tasks
                if t.definition.readable_id in c.definition.parents
            ],
            "taskName": t.definition.readable_id,
        }
        for t in tasks
    ]
    events = [
        {
            "id": e.event_id,
            "taskId": t.external_id,
            "timestamp": _iso(e.timestamp),
            "eventType": e.event_type,
            "message": e.message,
            "errorMessage": e.error,
            "output": e.output,
            "workerId": e.worker_id,
            "taskDisplayName": t.definition.readable_id,
            "retryCount": e.retry_count,
            "attempt": e.retry_count + 1,
        }
        for t, e in sorted(
            ((t, e) for t in tasks for e in t.events), key=lambda pair: pair[1].event_id
        )
    ]
    return {
        "run": {
            "metadata": _meta(run.external_id, run.created_at, run.finished_at),
            "status": run_status(run),
            "startedAt": _iso(min(started)) if started else None,
            "finishedAt": _iso(run.finished_at),
            "duration": _duration_ms(min(started) if started else None, run.finished_at),
            "tenantId": tenant_id,
            "additionalMetadata": run.additional_metadata,
            "displayName": run.workflow.name,
            "workflowId": run.workflow.workflow_id,
            "output": output,
            "errorMessage": errors[0] if errors else None,
            "workflowVersionId": run.workflow.version_id,
            "input": run.input,
            "createdAt": _iso(run.created_at),
        },
        "taskEvents": events,
        "shape": shape,
        "tasks": [
            task_summary(tenant_id, t)
            for t in tasks
            if t.state not in (TaskState.WAITING, TaskState.SKIPPED)
        ],
    }


def worker_json(worker: WorkerRecord) -> JSONBody:
    if worker.paused:
        status = "PAUSED"
    elif worker.gone or worker.stream is None:
        status = "INACTIVE"
    else:
        status = "ACTIVE"
    return {
        "metadata": _meta(worker.worker_id, worker.registered_at, now_wall()),
        "name": worker.name,
        "type": "SELFHOSTED",
        "status": status,
        "actions": sorted(worker.actions),
    }


class _Handler(BaseHTTPRequestHandler):
    scheduler: ClassVar[Scheduler]
    token: ClassVar[str]
    routes: ClassVar[list[tuple[str, re.Pattern[str], _Route]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the engine's state, not its access log."""

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"errors": [{"description": message}]})

    def _read_body(self) -> JSONBody:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as e:
            raise InvalidRequestError(f"request body is not JSON: {e}") from e
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        if not bearer_matches(self.headers.get("Authorization"), self.token):
            self._error(401, "invalid or missing bearer token")
            return
        try:
            for route_method, pattern, handler in self.routes:
                match = pattern.fullmatch(path)
                if route_method == method and match is not None:
                    status, body = handler(self, match, self._read_body())
                    self._send(status, body)
                    return
            raise UnsupportedError(f"{method} {path} is not implemented by the Hatchet test engine")
        except EngineError as e:
            self._error(e.http_status, str(e))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ routes

    def _check_tenant(self, tenant: str) -> None:
        if tenant != self.scheduler.tenant_id:
            raise _Forbidden(f"tenant {tenant} is not this engine's tenant")

    def cancel_tasks(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        self._check_tenant(match["tenant"])
        ids = body.get("externalIds") or []
        if body.get("filter") is not None and not ids:
            raise UnsupportedError("cancelling by filter is not implemented")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidRequestError("externalIds must be a list of strings")
        return 200, {"ids": self.scheduler.cancel(ids)}

    def update_worker(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        paused = body.get("isPaused")
        with self.scheduler.lock:
            worker = self.scheduler.find_worker(match["worker"])
            if paused is not None:
                self.scheduler.set_paused(worker.worker_id, bool(paused))
            return 200, worker_json(worker)

    def get_worker(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        with self.scheduler.lock:
            return 200, worker_json(self.scheduler.find_worker(match["worker"]))

    def get_run(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        with self.scheduler.lock:
            run = self.scheduler.get_run(match["run"])
            return 200, run_details(self.scheduler.tenant_id, run)

    def get_run_status(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        with self.scheduler.lock:
            return 200, run_status(self.scheduler.get_run(match["run"]))

    def get_task(self, match: re.Match[str], body: JSONBody) -> tuple[int, Any]:
        with self.scheduler.lock:
            task = self.scheduler.find_task(match["task"])
            return 200, task_summary(self.scheduler.tenant_id, task)


_ID = r"[0-9A-Za-z-]+"
_Handler.routes = [
    (
        "POST",
        re.compile(rf"/api/v1/stable/tenants/(?P<tenant>{_ID})/tasks/cancel"),
        _Handler.cancel_tasks,
    ),
    ("PATCH", re.compile(rf"/api/v1/workers/(?P<worker>{_ID})"), _Handler.update_worker),
    ("GET", re.compile(rf"/api/v1/workers/(?P<worker>{_ID})"), _Handler.get_worker),
    ("GET", re.compile(rf"/api/v1/stable/workflow-runs/(?P<run>{_ID})"), _Handler.get_run),
    (
        "GET",
        re.compile(rf"/api/v1/stable/workflow-runs/(?P<run>{_ID})/status"),
        _Handler.get_run_status,
    ),
    ("GET", re.compile(rf"/api/v1/stable/tasks/(?P<task>{_ID})"), _Handler.get_task),
]


class RestServer:
    """The HTTP side of the engine, on ``127.0.0.1`` and an ephemeral port."""

    def __init__(self, scheduler: Scheduler, token: str, host: str = "127.0.0.1") -> None:
        class Handler(_Handler):
            pass

        handler = Handler
        handler.scheduler = scheduler
        handler.token = token
        self._handler: type[_Handler] = handler
        self._httpd = ThreadingHTTPServer((host, 0), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    def set_token(self, token: str) -> None:
        """Set the bearer token requests must carry (it embeds this server's port)."""
        self._handler.token = token

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="hatchet-test-engine-rest",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
