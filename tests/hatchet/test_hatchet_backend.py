"""What the ``hatchet`` backend itself promises, beyond the contract suite.

Configuration, the mapping of a MageFlow task onto a Hatchet standalone task, and what a
publish looks like on the engine (input, metadata, priority, schedule, no parent run),
checked against :class:`HatchetTestEngine` with real worker processes (one ``mageflow
worker``, one ``run_worker()`` script) in a Hatchet namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hatchet_sdk import Hatchet
from pydantic import BaseModel

from mageflow import Backoff, Mageflow, Options
from mageflow.backend.base import HEADER_KEY, OutgoingTask, TaskDefinition
from mageflow.engine import split_key
from mageflow.errors import ConfigurationError, TaskFailedError
from mageflow.models.status import SignatureStatus
from mageflow.plugins.manager import backend_for_native
from mageflow.testing import contract_tasks
from mageflow.testing.probe import RedisProbe
from mageflow_hatchet.backend import WRAPPED, HatchetBackend
from mageflow_hatchet.testing import HatchetTestEngine, RunInfo
from tests.hatchet.conftest import WorkerPool, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hatchet-backend")]

NAMESPACE = "adapter_"  # HATCHET_CLIENT_NAMESPACE=adapter, as the SDK normalises it


def namespaced(engine: HatchetTestEngine) -> Hatchet:
    return Hatchet(config=engine.client_config().model_copy(update={"namespace": NAMESPACE}))


# -- configuration (no workers) -----------------------------------------------------------
def test_unknown_option_names_the_accepted_ones(engine: HatchetTestEngine) -> None:
    with pytest.raises(ConfigurationError, match=r"brokr.*accepted: hatchet=, worker_name="):
        Mageflow(backend="hatchet", hatchet=engine.hatchet(), brokr="x")


def test_a_non_hatchet_object_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"hatchet_sdk\.Hatchet"):
        Mageflow(backend="hatchet", hatchet="localhost:7070")


def test_no_token_in_the_environment_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # the SDK also reads .env files from the cwd
    monkeypatch.delenv("HATCHET_CLIENT_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="HATCHET_CLIENT_TOKEN"):
        Mageflow(backend="hatchet")


def test_a_bad_token_is_not_shown_in_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", "eySECRET.part")
    with pytest.raises(ConfigurationError, match="Invalid token format") as info:
        Mageflow(backend="hatchet")
    assert "SECRET" not in str(info.value)


def test_the_environment_configures_the_client(
    engine: HatchetTestEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in engine.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAGEFLOW_BACKEND", "hatchet")
    app = Mageflow(slots=7, worker_name="w")
    assert isinstance(app.backend, HatchetBackend)
    assert app.backend.describe() == {
        "host_port": engine.grpc_address,
        "worker_name": "w",
        "slots": "7",
    }


def test_a_hatchet_client_selects_the_backend(engine: HatchetTestEngine) -> None:
    client = engine.hatchet()
    app = Mageflow(client, "redis://localhost:1/0")
    assert isinstance(app.backend, HatchetBackend)
    assert app.backend.hatchet is client
    spec = backend_for_native(client)
    assert spec is not None and spec.native_option == "hatchet"


async def _noop(payload: Any, ctx: Any) -> Any:
    return None


def test_a_task_becomes_a_standalone_task_with_retries_and_timeouts(
    engine: HatchetTestEngine,
) -> None:
    backend = HatchetBackend(namespaced(engine), schedule_timeout=600)
    backend.register(TaskDefinition("My.Task", _noop, retries=4, timeout=2.5))
    backend.register(TaskDefinition("plain", _noop))
    proto = backend.workflows["My.Task"].to_proto()
    assert proto.name == "adapter_My.Task"
    (task,) = proto.tasks
    assert (task.readable_id, task.retries) == ("my.task", 4)  # Hatchet lower-cases it
    assert task.timeout == "8s"  # ceil(2.5) + 5: the core itself stops it at 2.5 s
    assert task.schedule_timeout == "10m"
    (plain,) = backend.workflows["plain"].to_proto().tasks
    assert (plain.retries, plain.timeout, plain.schedule_timeout) == (0, "1h", "10m")
    with pytest.raises(ConfigurationError, match="differ only in case"):
        backend.register(TaskDefinition("my.task", _noop))
    backend.register(TaskDefinition("My.Task", _noop, retries=1))  # re-registering is fine


def test_a_backoff_is_also_hatchet_s_native_policy(engine: HatchetTestEngine) -> None:
    """factor -> backoff_factor, max rounded up -> backoff_max_seconds; nothing for a
    backoff that is never used (no retries) or always zero."""
    backend = HatchetBackend(namespaced(engine))
    slow = Backoff(initial=0.5, factor=3.0, max=7.5)
    backend.register(TaskDefinition("slow", _noop, retries=2, backoff=slow))
    backend.register(TaskDefinition("unused", _noop, backoff=slow))
    backend.register(TaskDefinition("zero", _noop, retries=2, backoff=Backoff.constant(0)))
    (task,) = backend.workflows["slow"].to_proto().tasks
    assert (task.backoff_factor, task.backoff_max_seconds) == (3.0, 8)
    for name in ("unused", "zero"):
        (plain,) = backend.workflows[name].to_proto().tasks
        assert not plain.HasField("backoff_factor")
        assert not plain.HasField("backoff_max_seconds")


def test_run_worker_needs_tasks_and_the_main_thread(engine: HatchetTestEngine) -> None:
    backend = HatchetBackend(engine.hatchet())
    with pytest.raises(ConfigurationError, match="no MageFlow task is registered"):
        backend.run_worker()
    backend.register(TaskDefinition("t", _noop))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            backend.run_worker()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], ConfigurationError)
    assert "main thread" in str(errors[0])


# -- on the engine, with workers -------------------------------------------------------------
class StrictInput(BaseModel):  # the input of contract_app's hatchet.strict
    ns: str
    count: int


class Setup:
    def __init__(self, engine: HatchetTestEngine, pool: WorkerPool, app: Mageflow) -> None:
        self.engine, self.pool, self.app = engine, pool, app
        self.probe = RedisProbe(pool.env["MAGEFLOW_PROBE_URL"])
        backend = app.backend
        assert isinstance(backend, HatchetBackend)
        self.backend = backend

    def runs(self, task_name: str, ns: str) -> list[RunInfo]:
        """Runs of ``task_name`` whose input mentions ``ns`` (MageFlow's payload nests the
        message: the engine shows what MageFlow published, as it published it)."""
        return [r for r in self.engine.runs(NAMESPACE + task_name) if ns in json.dumps(r.input)]

    async def wait_for_event(self, ns: str, event: str, n: int = 1) -> list[Any]:
        async def enough() -> bool:
            return len(await self.probe.events(ns, event)) >= n

        await self.probe.wait_until(enough, 20, f"{n} x {event}")
        return await self.probe.events(ns, event)


@pytest.fixture(scope="module")
def pool(engine: HatchetTestEngine, redis_url: str) -> Iterator[WorkerPool]:
    prefix = f"mf-hb-{uuid.uuid4().hex[:10]}"
    env = {**worker_env(redis_url, prefix, None), "HATCHET_CLIENT_NAMESPACE": "adapter"}
    workers = WorkerPool(engine, env, kinds=("cli", "script"), slots=2, namespace=NAMESPACE)
    try:
        workers.start()
        yield workers
    finally:
        workers.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def setup(
    engine: HatchetTestEngine, pool: WorkerPool, redis_url: str
) -> AsyncIterator[Setup]:
    app = Mageflow(
        backend="hatchet",
        hatchet=namespaced(engine),
        redis_url=redis_url,
        key_prefix=pool.env["MAGEFLOW_KEY_PREFIX"],
    )
    contract_tasks.register(app)
    app.task("hatchet.strict", input_validator=StrictInput, retries=3)(_noop)
    s = Setup(engine, pool, app)
    yield s
    await app.aclose()
    await s.probe.close()


on_session_loop = pytest.mark.asyncio(loop_scope="session")


@on_session_loop
async def test_payload_is_the_input_and_headers_the_metadata(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("contract.echo", a=1)
    assert await sig.aio_run({"ns": ns, "b": 2}, timeout=20) == {"a": 1, "b": 2}
    (run,) = setup.runs("contract.echo", ns)
    # MageFlow's result is in Redis before the worker reports the run COMPLETED
    run = await setup.engine.wait_for_run_async(run.run_id)
    assert run.status == "COMPLETED"
    assert run.input == {"in": [], "own": {"ns": ns, "b": 2}}  # the core's payload, as is
    assert run.additional_metadata == {HEADER_KEY: sig.key}
    assert run.task.output == {"result": {"a": 1, "b": 2}}


@on_session_loop
async def test_priority_maps_onto_hatchet_s_range(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    ids = await setup.backend.publish_many(
        [
            OutgoingTask("contract.echo", {"ns": ns, "i": i}, {}, priority=p)
            for i, p in enumerate([None, 0, 3, 4, 6, 7, 9])
        ]
    )
    runs = [await setup.engine.wait_for_run_async(i) for i in ids]
    assert [r.priority for r in runs] == [1, 1, 1, 2, 2, 3, 3]
    assert [r.input["i"] for r in runs] == [0, 1, 2, 3, 4, 5, 6]


@on_session_loop
async def test_a_signature_s_priority_reaches_hatchet(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    urgent = await setup.app.sign("contract.echo", mageflow_options=Options(priority=9))
    default = await setup.app.sign("contract.urgent")  # registered with priority 8
    await urgent.aio_run({"ns": ns, "which": "urgent"}, timeout=30)
    await default.aio_run({"ns": ns, "which": "default"}, timeout=30)
    assert [r.priority for r in setup.runs("contract.echo", ns)] == [3]
    assert [r.priority for r in setup.runs("contract.urgent", ns)] == [3]


@on_session_loop
async def test_a_payload_that_is_not_an_object_is_wrapped(setup: Setup) -> None:
    run_id = await setup.backend.publish(OutgoingTask("contract.echo", [1, 2], {}))
    run = await setup.engine.wait_for_run_async(run_id)
    assert run.input == {WRAPPED: [1, 2]}
    # the core calls a task published without a signature key with {} for a non-dict:
    # echo then fails on the missing "ns" -- the point is that Hatchet accepted the run
    assert run.status == "FAILED"
    assert "KeyError" in (run.task.error or "")


@on_session_loop
async def test_a_delayed_task_is_a_scheduled_run(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    started = time.monotonic()
    await setup.backend.publish_many(
        [
            OutgoingTask("contract.echo", {"ns": ns, "when": "later"}, {}, delay=1.0),
            OutgoingTask("contract.echo", {"ns": ns, "when": "now"}, {}),
        ]
    )
    first = await setup.wait_for_event(ns, "echo", 1)
    assert first == [{"when": "now"}]
    assert time.monotonic() - started < 0.9
    both = await setup.wait_for_event(ns, "echo", 2)
    assert both[1] == {"when": "later"}
    assert time.monotonic() - started >= 0.9


@on_session_loop
async def test_publishing_from_a_task_starts_an_independent_run(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    wf = await setup.app.chain(
        [
            await setup.app.sign("contract.echo", step=1),
            await setup.app.sign("contract.echo", ns=ns, step=2),
        ]
    )
    await wf.aio_run({"ns": ns}, timeout=20)
    workflow_id, _ = split_key(wf.key)
    runs = [
        r
        for r in setup.engine.runs(NAMESPACE + "contract.echo")
        if r.additional_metadata.get(HEADER_KEY, "").startswith(f"{workflow_id}.")
    ]
    assert len(runs) == 2
    # step 2 was published by step 1's worker; the SDK would make it a child run of
    # step 1 (cancelled with it, deduplicated by child index) if the adapter let it
    records = [setup.engine._scheduler.get_run(r.run_id) for r in runs]
    assert [r.parent_workflow_run_id for r in records] == ["", ""]


@on_session_loop
async def test_publishing_works_from_any_event_loop(setup: Setup) -> None:
    ns = uuid.uuid4().hex

    def publish_in_new_loop(i: int) -> str:
        task = OutgoingTask("contract.echo", {"ns": ns, "i": i}, {})
        return asyncio.run(setup.backend.publish(task))

    ids = [await asyncio.to_thread(publish_in_new_loop, i) for i in range(2)]
    ids.append(await setup.backend.publish(OutgoingTask("contract.echo", {"ns": ns}, {})))
    for run_id in ids:
        assert (await setup.engine.wait_for_run_async(run_id)).status == "COMPLETED"


@on_session_loop
async def test_cancel_stops_a_running_run_at_once(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    run_id = await setup.backend.publish(OutgoingTask("contract.block", {"ns": ns}, {}))
    await setup.wait_for_event(ns, "block-start")
    await setup.backend.cancel([run_id])
    assert (await setup.engine.wait_for_run_async(run_id)).status == "CANCELLED"
    # released well within the second after which the SDK itself would cancel the
    # task: it must already be stopped (the adapter cancels when Hatchet's flag is set)
    await asyncio.sleep(0.1)
    await setup.probe.set_flag(ns, "release")
    await asyncio.sleep(0.3)
    assert await setup.probe.events(ns, "block-done") == []


@on_session_loop
async def test_cancel_stops_a_task_busy_with_redis_calls(setup: Setup) -> None:
    """A cancellation landing in a Redis call is often swallowed (Python < 3.12): the
    adapter cancels again until the task stops."""
    for _ in range(3):
        ns = uuid.uuid4().hex
        run_id = await setup.backend.publish(OutgoingTask("hatchet.busy", {"ns": ns}, {}))
        await setup.wait_for_event(ns, "busy-start")
        await setup.backend.cancel([run_id])
        await setup.wait_for_event(ns, "busy-cancelled")
        await setup.probe.set_flag(ns, "release")
        await asyncio.sleep(0.3)
        assert await setup.probe.events(ns, "busy-done") == []


@on_session_loop
async def test_retries_keep_the_run_id_and_count_attempts(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("contract.flaky")
    assert await sig.aio_run({"ns": ns, "fail_times": 2}, timeout=20) == "recovered"
    (run,) = setup.runs("contract.flaky", ns)
    run = await setup.engine.wait_for_run_async(run.run_id)
    assert [(a.attempt_number, a.outcome) for a in run.task.attempts] == [
        (1, "FAILED"),
        (2, "FAILED"),
        (3, "COMPLETED"),
    ]
    assert run.task.external_id == run.run_id
    assert (await sig.get_state()).attempts == 3


@on_session_loop
async def test_the_engine_holds_each_retry_for_the_core_s_backoff_delay(setup: Setup) -> None:
    """A retried failure raises RetryAfterException: Hatchet waits the delay the core
    computed (within the backoff's bounds), not its own factor ** n policy."""
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("contract.backoff")
    assert await sig.aio_run({"ns": ns}, timeout=20) == "recovered"
    (run,) = setup.runs("contract.backoff", ns)
    task = (await setup.engine.wait_for_run_async(run.run_id)).task
    waits = [
        float(e.message.removeprefix("retrying in ").removesuffix("s"))
        for e in task.events
        if e.event_type == "RETRYING"
    ]
    assert len(waits) == contract_tasks.RETRIES
    for retry, wait in enumerate(waits, start=1):
        shortest, longest = contract_tasks.BACKOFF.bounds(retry)
        assert shortest <= wait <= longest + 0.001  # the engine gets whole milliseconds
    for attempt in task.attempts[:2]:  # Hatchet shows the task's own error
        assert "RuntimeError: not yet" in (attempt.error or "")


@on_session_loop
async def test_invalid_input_is_not_retried(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("hatchet.strict")
    with pytest.raises(TaskFailedError, match="count"):
        await sig.aio_run({"ns": ns, "count": "many"}, timeout=20)
    (run,) = setup.runs("hatchet.strict", ns)
    await setup.engine.wait_for_run_async(run.run_id)
    attempts = setup.engine.run(run.run_id).task.attempts
    assert [a.outcome for a in attempts] == ["FAILED"]  # retries=3, NonRetryableException
    assert "InvalidTaskInputError: input of task" in (attempts[0].error or "")


@on_session_loop
async def test_timeout_fails_each_attempt_before_hatchet_s_backstop(setup: Setup) -> None:
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("contract.sleepy")  # timeout=0.3, retries=1
    await sig.aio_run_no_wait({"ns": ns})
    await setup.wait_for_event(ns, "sleepy-attempt", 2)
    (run,) = setup.runs("contract.sleepy", ns)
    run = await setup.engine.wait_for_run_async(run.run_id, timeout=10)
    assert [a.outcome for a in run.task.attempts] == ["FAILED", "FAILED"]  # not TIMED_OUT
    assert all("TaskTimeoutError" in (a.error or "") for a in run.task.attempts)
    assert await sig.get_status() is SignatureStatus.FAILED


@on_session_loop
async def test_a_killed_worker_s_run_keeps_its_id_on_another_worker(setup: Setup) -> None:
    """SIGKILL of a whole worker (no unsubscribe): after the engine's heartbeat timeout
    the run is re-queued with the same run id and attempt; its user code runs again
    (at-least-once for a task whose worker died), the signature completes once."""
    ns = uuid.uuid4().hex
    sig = await setup.app.sign("contract.block")
    await sig.aio_run_no_wait({"ns": ns})
    await setup.wait_for_event(ns, "block-start")
    (run,) = setup.runs("contract.block", ns)
    worker_id = run.task.attempts[-1].worker_id
    names = {w.worker_id: w.name for w in setup.engine.workers()}
    (victim,) = [w for w in setup.pool.workers if names.get(worker_id) == w.name]
    victim.proc.kill()  # the whole process group: main process and listener
    await setup.wait_for_event(ns, "block-start", 2)
    await setup.probe.set_flag(ns, "release")
    assert await sig.wait(timeout=20) == "released"
    task = (await setup.engine.wait_for_run_async(run.run_id)).task
    assert [(a.outcome, a.attempt_number) for a in task.attempts] == [
        ("REASSIGNED", 1),
        ("COMPLETED", 1),
    ]
    assert task.attempts[1].worker_id != worker_id
    assert len(await setup.probe.events(ns, "block-done")) == 1


@on_session_loop
async def test_status_names_the_task_a_queued_step_waits_for(setup: Setup) -> None:
    """Hatchet assigns a run only to a worker that registered its task and keeps it queued
    otherwise (up to ``schedule_timeout``), so MageFlow cannot fail it; ``mageflow status``
    says which task waits for a worker."""
    app, backend = setup.app, setup.backend
    app.task("hatchet.unserved")(_noop)  # known to the client and the engine, no worker
    proto = backend.workflows["hatchet.unserved"].to_proto()
    await asyncio.to_thread(backend.hatchet._client.admin.put_workflow, proto)
    ns = uuid.uuid4().hex
    step = await app.sign("hatchet.unserved", ns=ns)
    chain = await app.chain(["contract.echo", step], name="stuck")
    await chain.aio_run_no_wait({"ns": ns})
    await setup.wait_for_event(ns, "echo")

    def step_runs() -> list[RunInfo]:
        runs = setup.engine.runs(NAMESPACE + "hatchet.unserved")
        return [r for r in runs if r.additional_metadata.get(HEADER_KEY) == step.key]

    await setup.engine.wait_until_async(lambda: bool(step_runs()))
    assert [r.status for r in step_runs()] == ["QUEUED"]

    env = {
        **os.environ,
        **setup.pool.env,
        **setup.engine.client_env(),
        "HATCHET_CLIENT_NAMESPACE": "adapter",
        "COLUMNS": "250",
    }
    for key in (chain.key, step.key):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mageflow", "status", key],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip().startswith("waiting")]
        assert len(lines) == 1, done.stdout
        line = lines[0]
        assert "for a worker that serves task 'hatchet.unserved'" in line
        assert (step.key in line) is (key == chain.key)  # below the chain: names the node
    assert await step.get_status() is SignatureStatus.PENDING
