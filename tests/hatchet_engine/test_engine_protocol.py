"""HatchetTestEngine at the wire level: a hand-driven worker over the SDK's gRPC stubs.

Fast and deterministic; the end-to-end tests with the real SDK worker are in
``test_engine_e2e.py``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from hatchet_sdk import (
    ClientConfig,
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    EmptyModel,
    Hatchet,
)
from hatchet_sdk import Context as HatchetContext
from hatchet_sdk.contracts import dispatcher_pb2 as d
from hatchet_sdk.contracts.dispatcher_pb2_grpc import DispatcherStub
from hatchet_sdk.contracts.events_pb2 import PushEventRequest
from hatchet_sdk.contracts.events_pb2_grpc import EventsServiceStub
from hatchet_sdk.contracts.v1 import workflows_pb2 as v1
from hatchet_sdk.contracts.v1.shared.trigger_pb2 import TriggerWorkflowRequest
from hatchet_sdk.contracts.v1.workflows_pb2_grpc import AdminServiceStub
from hatchet_sdk.contracts.workflows_pb2 import ScheduleWorkflowRequest
from hatchet_sdk.contracts.workflows_pb2_grpc import WorkflowServiceStub
from hatchet_sdk.token import extract_claims_from_jwt

from mageflow_hatchet_testengine import HatchetTestEngine
from mageflow_hatchet_testengine.durations import parse_duration


class Wire:
    """gRPC stubs with the engine's token."""

    def __init__(self, engine: HatchetTestEngine, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(engine.grpc_address)
        self.metadata = (("authorization", f"bearer {token or engine.token}"),)
        # typed Any: the SDK's generated stubs are untyped (or partially stubbed)
        self.dispatcher: Any = DispatcherStub(self.channel)
        self.admin: Any = AdminServiceStub(self.channel)
        self.workflows: Any = WorkflowServiceStub(self.channel)
        self.events: Any = EventsServiceStub(self.channel)

    def put_workflow(self, name: str, *tasks: v1.CreateTaskOpts) -> None:
        self.admin.PutWorkflow(
            v1.CreateWorkflowVersionRequest(name=name, tasks=list(tasks)), metadata=self.metadata
        )

    def trigger(self, name: str, payload: dict[str, Any], priority: int | None = None) -> str:
        req = TriggerWorkflowRequest(name=name, input=json.dumps(payload))
        if priority is not None:
            req.priority = priority
        resp = self.workflows.TriggerWorkflow(req, metadata=self.metadata)
        return str(resp.workflow_run_id)


class RawWorker:
    """A worker driven by hand: registers, listens, and sends step events."""

    def __init__(self, wire: Wire, actions: list[str], slots: int, listen: bool = True) -> None:
        self.wire = wire
        resp = wire.dispatcher.Register(
            d.WorkerRegisterRequest(
                worker_name=f"raw-{uuid.uuid4().hex[:6]}",
                actions=actions,
                services=["default"],
                slot_config={"default": slots},
            ),
            metadata=wire.metadata,
        )
        self.worker_id: str = resp.worker_id
        self.actions: queue.Queue[d.AssignedAction] = queue.Queue()
        self._stream: Any = None
        if listen:
            self.listen()

    def listen(self) -> None:
        self._stream = self.wire.dispatcher.ListenV2(
            d.WorkerListenRequest(worker_id=self.worker_id), metadata=self.wire.metadata
        )

        def pump() -> None:
            try:
                for action in self._stream:
                    self.actions.put(action)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 5.0) -> d.AssignedAction:
        return self.actions.get(timeout=timeout)

    def nothing_for(self, seconds: float) -> bool:
        try:
            self.actions.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def send(
        self,
        action: d.AssignedAction,
        event_type: d.StepActionEventType,
        payload: str = "",
        *,
        should_not_retry: bool = False,
        retry_after_ms: int | None = None,
    ) -> None:
        self.wire.dispatcher.SendStepActionEvent(
            d.StepActionEvent(
                worker_id=self.worker_id,
                task_run_external_id=action.task_run_external_id,
                action_id=action.action_id,
                event_type=event_type,
                event_payload=payload,
                retry_count=action.retry_count,
                should_not_retry=should_not_retry,
                retry_after_ms=retry_after_ms,
            ),
            metadata=self.wire.metadata,
        )

    def complete(self, action: d.AssignedAction, output: dict[str, Any]) -> None:
        self.send(action, d.STEP_EVENT_TYPE_STARTED)
        self.send(action, d.STEP_EVENT_TYPE_COMPLETED, json.dumps(output))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()


@pytest.fixture
def engine() -> Iterator[HatchetTestEngine]:
    with HatchetTestEngine() as eng:
        yield eng


@pytest.fixture
def wire(engine: HatchetTestEngine) -> Iterator[Wire]:
    w = Wire(engine)
    yield w
    w.channel.close()


def task_opts(readable_id: str, workflow: str, **kw: Any) -> v1.CreateTaskOpts:
    return v1.CreateTaskOpts(
        readable_id=readable_id, action=f"{workflow}:{readable_id}", timeout="60s", **kw
    )


def rest(
    engine: HatchetTestEngine, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        engine.rest_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token or engine.token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# ----------------------------------------------------------------------- plumbing


def test_token_carries_the_engine_addresses(engine: HatchetTestEngine) -> None:
    claims = extract_claims_from_jwt(engine.token)

    assert engine.token.startswith("ey")
    assert claims.sub == engine.tenant_id
    assert claims.grpc_broadcast_address == engine.grpc_address
    assert claims.server_url == engine.rest_url
    assert engine.grpc_address.startswith("127.0.0.1:")


def test_client_config_is_not_fooled_by_dotenv_files(
    engine: HatchetTestEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "HATCHET_CLIENT_HOST_PORT=prod.example.com:443\nHATCHET_CLIENT_NAMESPACE=prod\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", engine.token)

    fooled = ClientConfig()
    config = engine.client_config()

    assert fooled.host_port == "prod.example.com:443"  # the pitfall
    assert config.host_port == engine.grpc_address
    assert config.namespace == ""
    assert config.tls_config.strategy == "none"
    assert Hatchet(config=config).tenant_id == engine.tenant_id


def test_client_env_points_at_the_engine(engine: HatchetTestEngine) -> None:
    env = engine.client_env()

    assert env["HATCHET_CLIENT_TOKEN"] == engine.token
    assert env["HATCHET_CLIENT_TLS_STRATEGY"] == "none"
    assert env["HATCHET_CLIENT_HOST_PORT"] == engine.grpc_address


def test_engine_version_is_modern(wire: Wire) -> None:
    resp = wire.dispatcher.GetVersion(d.GetVersionRequest(), metadata=wire.metadata)

    assert resp.version == "v0.120.0"


def test_unimplemented_rpcs_fail_loudly(wire: Wire) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: wire.events.Push(PushEventRequest(key="k", payload="{}"), metadata=wire.metadata),
        lambda: next(
            iter(
                wire.dispatcher.Listen(d.WorkerListenRequest(worker_id="w"), metadata=wire.metadata)
            )
        ),
        lambda: wire.admin.ReplayTasks(v1.ReplayTasksRequest(), metadata=wire.metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_wrong_token_is_rejected(engine: HatchetTestEngine) -> None:
    bad = Wire(engine, token="eyJ.bad.token")
    with pytest.raises(grpc.RpcError) as caught:
        bad.dispatcher.GetVersion(d.GetVersionRequest(), metadata=bad.metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, _ = rest(engine, "GET", "/api/v1/workers/x", token="nope")
    assert status == 401
    bad.channel.close()


def test_unknown_rest_routes_answer_501(engine: HatchetTestEngine) -> None:
    status, body = rest(engine, "GET", f"/api/v1/tenants/{engine.tenant_id}/workflows")
    assert status == 501
    assert "not implemented" in body["errors"][0]["description"]
    status, _ = rest(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{engine.tenant_id}/tasks/cancel",
        {"filter": {"since": "2024-01-01T00:00:00Z"}},
    )
    assert status == 501


def test_unsupported_workflow_features_are_refused(engine: HatchetTestEngine, wire: Wire) -> None:
    hatchet = engine.hatchet()

    @hatchet.task(
        name="limited",
        concurrency=ConcurrencyExpression(
            expression="'x'", max_runs=1, limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
        ),
    )
    def limited(input: EmptyModel, ctx: HatchetContext) -> dict[str, str]:
        return {}

    @hatchet.task(name="cron", on_crons=["* * * * *"])
    def cron(input: EmptyModel, ctx: HatchetContext) -> dict[str, str]:
        return {}

    for standalone in (limited, cron):
        with pytest.raises(grpc.RpcError) as caught:
            wire.admin.PutWorkflow(standalone.to_proto(), metadata=wire.metadata)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert engine.workflows() == []


def test_triggering_an_unknown_workflow_is_not_found(wire: Wire) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        wire.trigger("nope", {})
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------- scheduling


def test_queued_runs_go_by_priority_then_first_in_first_out(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    worker = RawWorker(wire, ["wf:t"], slots=1, listen=False)
    low_a = wire.trigger("wf", {"n": "a"}, priority=1)
    low_b = wire.trigger("wf", {"n": "b"}, priority=1)
    high = wire.trigger("wf", {"n": "c"}, priority=3)

    worker.listen()
    order = []
    for _ in range(3):
        action = worker.next()
        order.append(action.workflow_run_id)
        assert worker.nothing_for(0.2)  # one slot: nothing else until this one finishes
        worker.complete(action, {})

    assert order == [high, low_a, low_b]
    worker.close()


def test_assigned_action_carries_what_the_sdk_reads(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    req = TriggerWorkflowRequest(
        name="wf", input=json.dumps({"x": 1}), additional_metadata=json.dumps({"k": "v"})
    )
    run_id = wire.workflows.TriggerWorkflow(req, metadata=wire.metadata).workflow_run_id

    action = worker.next()

    assert action.action_type == d.START_STEP_RUN
    assert action.action_id == "wf:t"
    assert action.task_name == "t"
    assert action.workflow_run_id == run_id == action.task_run_external_id
    assert action.retry_count == 0
    assert action.tenant_id == engine.tenant_id
    assert json.loads(action.additional_metadata) == {"k": "v"}
    payload = json.loads(action.action_payload)
    assert payload["input"] == {"x": 1}
    assert payload["parents"] == {}
    worker.close()


def test_retries_honour_retry_after_and_stop_when_exhausted(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    wire.put_workflow("wf", task_opts("t", "wf", retries=1))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    run_id = wire.trigger("wf", {})

    first = worker.next()
    failed_at = time.monotonic()
    worker.send(first, d.STEP_EVENT_TYPE_FAILED, "ValueError: boom\ntrace", retry_after_ms=400)
    second = worker.next()
    delay = time.monotonic() - failed_at
    worker.send(second, d.STEP_EVENT_TYPE_FAILED, "ValueError: boom again\ntrace")

    run = engine.wait_for_run(run_id, timeout=5)
    assert second.task_run_external_id == first.task_run_external_id
    assert (first.retry_count, second.retry_count) == (0, 1)
    assert delay >= 0.35
    assert run.status == "FAILED"
    assert run.task.error == "ValueError: boom again\ntrace"
    worker.close()


def test_native_backoff_waits_factor_to_the_retry_number_capped(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    """Hatchet's formula: retry n waits min(backoff_max_seconds, backoff_factor ** n),
    n = 1 for the first retry."""
    wire.put_workflow("wf", task_opts("t", "wf", retries=2, backoff_factor=0.5))
    wire.put_workflow(
        "capped", task_opts("c", "capped", retries=1, backoff_factor=3.0, backoff_max_seconds=1)
    )
    worker = RawWorker(wire, ["wf:t", "capped:c"], slots=1)
    runs = [wire.trigger("wf", {}), wire.trigger("capped", {})]
    for _ in range(5):
        worker.send(worker.next(), d.STEP_EVENT_TYPE_FAILED, "ValueError: boom\ntrace")

    def retrying(run_id: str) -> list[str]:
        events = engine.wait_for_run(run_id, timeout=5).task.events
        return [e.message for e in events if e.event_type == "RETRYING"]

    assert retrying(runs[0]) == ["retrying in 0.5s", "retrying in 0.25s"]
    assert retrying(runs[1]) == ["retrying in 1s"]
    worker.close()


def test_a_stale_event_from_a_cancelled_attempt_is_ignored(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    run_id = wire.trigger("wf", {})
    start = worker.next()

    status, body = rest(
        engine,
        "POST",
        f"/api/v1/stable/tenants/{engine.tenant_id}/tasks/cancel",
        {"externalIds": [run_id]},
    )
    cancel = worker.next()
    worker.complete(start, {"late": True})

    assert status == 200
    assert body == {"ids": [run_id]}
    assert cancel.action_type == d.CANCEL_STEP_RUN
    assert cancel.task_run_external_id == run_id
    assert cancel.retry_count == start.retry_count
    assert engine.run(run_id).status == "CANCELLED"
    worker.close()


def test_release_slot_lets_the_next_run_start(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    wire.trigger("wf", {})
    wire.trigger("wf", {})
    first = worker.next()
    assert worker.nothing_for(0.2)

    wire.dispatcher.ReleaseSlot(
        d.ReleaseSlotRequest(task_run_external_id=first.task_run_external_id),
        metadata=wire.metadata,
    )

    second = worker.next()
    assert second.task_run_external_id != first.task_run_external_id
    worker.close()


def test_refresh_timeout_moves_the_deadline(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("wf", v1.CreateTaskOpts(readable_id="t", action="wf:t", timeout="500ms"))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    run_id = wire.trigger("wf", {})
    action = worker.next()

    wire.dispatcher.RefreshTimeout(
        d.RefreshTimeoutRequest(
            task_run_external_id=action.task_run_external_id, increment_timeout_by="3s"
        ),
        metadata=wire.metadata,
    )
    time.sleep(1.0)
    assert engine.run(run_id).status == "RUNNING"
    worker.complete(action, {"ok": 1})

    assert engine.wait_for_run(run_id, timeout=2).status == "COMPLETED"
    worker.close()


def test_a_run_nobody_picks_up_hits_its_schedule_timeout(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    wire.put_workflow(
        "wf",
        v1.CreateTaskOpts(readable_id="t", action="wf:t", timeout="60s", schedule_timeout="300ms"),
    )
    run_id = wire.trigger("wf", {})

    run = engine.wait_for_run(run_id, timeout=3)

    assert run.status == "CANCELLED"
    assert "SCHEDULING_TIMED_OUT" in (run.task.error or "")


def test_a_failed_dag_task_skips_its_descendants_only(
    engine: HatchetTestEngine, wire: Wire
) -> None:
    wire.put_workflow(
        "dag",
        task_opts("a", "dag"),
        task_opts("b", "dag", parents=["a"]),
        task_opts("c", "dag"),
    )
    worker = RawWorker(wire, ["dag:a", "dag:b", "dag:c"], slots=4)
    run_id = wire.trigger("dag", {"in": 1})
    roots = {a.task_name: a for a in (worker.next(), worker.next())}
    assert set(roots) == {"a", "c"}

    worker.send(roots["a"], d.STEP_EVENT_TYPE_FAILED, "RuntimeError: a broke\ntrace")
    worker.complete(roots["c"], {"c": 1})
    run = engine.wait_for_run(run_id, timeout=5)

    assert run.status == "FAILED"
    assert {k: t.status for k, t in run.tasks.items()} == {
        "a": "FAILED",
        "b": "SKIPPED",
        "c": "COMPLETED",
    }
    assert worker.nothing_for(0.2)
    subscription = wire.dispatcher.SubscribeToWorkflowRuns(
        iter([d.SubscribeToWorkflowRunsRequest(workflow_run_id=run_id)]), metadata=wire.metadata
    )
    event = next(iter(subscription))  # the run already finished: answered at once
    results = {r.task_name: r for r in event.results}
    assert set(results) == {"a", "c"}
    assert results["a"].error.startswith("RuntimeError: a broke")
    assert json.loads(results["c"].output) == {"c": 1}
    subscription.cancel()
    worker.close()


def test_children_get_parent_outputs(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("dag", task_opts("a", "dag"), task_opts("b", "dag", parents=["a"]))
    worker = RawWorker(wire, ["dag:a", "dag:b"], slots=4)
    run_id = wire.trigger("dag", {})

    worker.complete(worker.next(), {"from_a": 42})
    child = worker.next()

    assert child.task_name == "b"
    assert json.loads(child.action_payload)["parents"] == {"a": {"from_a": 42}}
    worker.complete(child, {})
    assert engine.wait_for_run(run_id, timeout=5).status == "COMPLETED"
    worker.close()


def test_v1_trigger_and_cancel_rpcs(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    resp = wire.admin.TriggerWorkflowRun(
        v1.TriggerWorkflowRunRequest(
            workflow_name="wf", input=b'{"a": 1}', additional_metadata=b'{"m": "x"}'
        ),
        metadata=wire.metadata,
    )
    run_id = resp.external_id
    assert engine.run(run_id).status == "QUEUED"  # no worker

    cancelled = wire.admin.CancelTasks(
        v1.CancelTasksRequest(external_ids=[run_id]), metadata=wire.metadata
    )
    details = wire.admin.GetRunDetails(
        v1.GetRunDetailsRequest(external_id=run_id), metadata=wire.metadata
    )

    assert list(cancelled.cancelled_tasks) == [run_id]
    assert details.status == v1.RunStatus.CANCELLED
    assert details.done
    assert json.loads(details.additional_metadata) == {"m": "x"}
    assert details.task_runs["t"].status == v1.RunStatus.CANCELLED


def test_a_scheduled_run_starts_at_its_time(engine: HatchetTestEngine, wire: Wire) -> None:
    wire.put_workflow("wf", task_opts("t", "wf"))
    worker = RawWorker(wire, ["wf:t"], slots=1)
    run_at = datetime.now(tz=timezone.utc) + timedelta(seconds=0.5)
    requested = time.monotonic()

    version = wire.workflows.ScheduleWorkflow(
        ScheduleWorkflowRequest(name="wf", schedules=[run_at], input=json.dumps({"s": 1})),
        metadata=wire.metadata,
    )

    assert len(version.scheduled_workflows) == 1
    assert engine.runs() == []
    action = worker.next()
    assert time.monotonic() - requested >= 0.4
    assert json.loads(action.action_payload)["input"] == {"s": 1}
    worker.close()


def test_durations() -> None:
    assert parse_duration("1m", default=0) == 60
    assert parse_duration("1h30m", default=0) == 5400
    assert parse_duration("250ms", default=0) == 0.25
    assert parse_duration("1.5h", default=0) == 5400
    assert parse_duration("42", default=0) == 42
    assert parse_duration("", default=7) == 7
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("-30s", default=0)
