"""The real hatchet-sdk client and worker (a subprocess) against HatchetTestEngine."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hatchet_sdk import Hatchet
from hatchet_sdk.exceptions import FailedTaskRunExceptionGroup

from mageflow_hatchet_testengine import HatchetTestEngine, WorkerProcess

pytestmark = pytest.mark.slow

StartWorker = Callable[..., tuple[WorkerProcess, str]]


def _started(engine: HatchetTestEngine, run_id: str) -> Callable[[], bool]:
    """Predicate: the run's (only) task has a started attempt in flight."""

    def check() -> bool:
        attempts = engine.run(run_id).task.attempts
        return bool(attempts) and attempts[-1].started_at is not None and not attempts[-1].outcome

    return check


async def test_aio_run_returns_the_task_output(
    hatchet_engine: HatchetTestEngine, main_worker: str, tasks: dict[str, Any], app: Any
) -> None:
    result = await tasks[app.ECHO].aio_run(
        app.EchoInput(message="hello"), additional_metadata={"trace": "t-1"}
    )

    assert result["echo"] == "hello"
    assert result["attempt"] == 1
    assert result["metadata"] == {"trace": "t-1"}
    [run] = [r for r in hatchet_engine.runs(app.ECHO) if r.input == {"message": "hello"}]
    assert run.status == "COMPLETED"
    assert run.additional_metadata == {"trace": "t-1"}
    assert run.task.output["echo"] == "hello"
    assert [a.outcome for a in run.task.attempts] == ["COMPLETED"]
    assert hatchet_engine.worker(main_worker).worker_id == run.task.attempts[0].worker_id
    logs = hatchet_engine.logs(run.task.external_id)
    assert [line.message for line in logs] == ["echoing hello"]


async def test_a_failed_attempt_is_retried_with_the_next_attempt_number(
    hatchet_engine: HatchetTestEngine, main_worker: str, tasks: dict[str, Any], app: Any
) -> None:
    result = await tasks[app.FLAKY].aio_run(app.EchoInput(message="flaky-1"))

    assert result == {"attempt": 2, "retry_count": 1}
    [run] = [r for r in hatchet_engine.runs(app.FLAKY) if r.input == {"message": "flaky-1"}]
    task = run.task
    assert task.external_id == run.run_id  # a standalone task keeps one id across attempts
    assert [(a.attempt_number, a.outcome) for a in task.attempts] == [
        (1, "FAILED"),
        (2, "COMPLETED"),
    ]
    assert "first attempt of flaky-1 fails" in (task.attempts[0].error or "")


async def test_a_non_retryable_failure_fails_at_once(
    hatchet_engine: HatchetTestEngine, main_worker: str, tasks: dict[str, Any], app: Any
) -> None:
    with pytest.raises(FailedTaskRunExceptionGroup) as caught:
        await tasks[app.FATAL].aio_run(app.EchoInput(message="fatal-1"))

    [error] = caught.value.exceptions
    assert error.exc_type == "NonRetryableException"
    assert "fatal-1: do not retry" in error.exc
    [run] = [r for r in hatchet_engine.runs(app.FATAL) if r.input == {"message": "fatal-1"}]
    assert run.status == "FAILED"
    assert len(run.task.attempts) == 1  # retries=3, but should_not_retry wins


async def test_cancel_stops_a_running_task(
    hatchet_engine: HatchetTestEngine,
    main_worker: str,
    hatchet_client: Hatchet,
    tasks: dict[str, Any],
    app: Any,
    tmp_path: Path,
) -> None:
    ref = await tasks[app.SLEEPER].aio_run(
        app.MarkerInput(marker_dir=str(tmp_path)), wait_for_result=False
    )
    run_id = ref.workflow_run_id
    await hatchet_engine.wait_until_async(_started(hatchet_engine, run_id))

    await hatchet_client.runs.aio_cancel(run_id)

    with pytest.raises(FailedTaskRunExceptionGroup, match="cancelled"):
        await ref.aio_result()
    run = hatchet_engine.run(run_id)
    assert run.status == "CANCELLED"
    assert [a.outcome for a in run.task.attempts] == ["CANCELLED"]
    assert hatchet_engine.worker(main_worker).used_slots == 0
    # the worker got CANCEL_STEP_RUN: it flags the context, then cancels the asyncio task
    deadline = time.monotonic() + 10
    while not (tmp_path / "cancelled").exists():
        assert time.monotonic() < deadline, "the task was not cancelled in the worker"
        await asyncio.sleep(0.05)
    assert (tmp_path / "cancelled").read_text() == "True"  # ctx.exit_flag was set first
    assert not (tmp_path / "finished").exists()


async def test_an_execution_timeout_is_a_retried_failure(
    hatchet_engine: HatchetTestEngine,
    main_worker: str,
    tasks: dict[str, Any],
    app: Any,
    tmp_path: Path,
) -> None:
    with pytest.raises(FailedTaskRunExceptionGroup, match="TIMED_OUT"):
        await tasks[app.SLOW_TIMEOUT].aio_run(app.MarkerInput(marker_dir=str(tmp_path)))

    [run] = [
        r for r in hatchet_engine.runs(app.SLOW_TIMEOUT) if r.input == {"marker_dir": str(tmp_path)}
    ]
    assert [(a.attempt_number, a.outcome) for a in run.task.attempts] == [
        (1, "TIMED_OUT"),
        (2, "TIMED_OUT"),
    ]
    assert (tmp_path / "attempt-1").exists()
    assert (tmp_path / "attempt-2").exists()


async def test_bulk_trigger_runs_every_item(
    hatchet_engine: HatchetTestEngine,
    main_worker: str,
    hatchet_client: Hatchet,
    tasks: dict[str, Any],
    app: Any,
) -> None:
    echo = tasks[app.ECHO]
    items = [
        echo.create_bulk_run_item(
            input=app.EchoInput(message=f"bulk-{i}"), additional_metadata={"item": str(i)}
        )
        for i in range(12)
    ]

    results = await echo.aio_run_many(items)

    assert [r["echo"] for r in results] == [f"bulk-{i}" for i in range(12)]
    assert [r["metadata"] for r in results] == [{"item": str(i)} for i in range(12)]
    bulk = [r for r in hatchet_engine.runs(app.ECHO) if r.input["message"].startswith("bulk-")]
    assert len(bulk) == 12
    assert all(r.status == "COMPLETED" for r in bulk)
    # the REST read path agrees
    details = await hatchet_client.runs.aio_get(bulk[0].run_id)
    assert details.run.output["echo"] == "bulk-0"
    status = await hatchet_client.runs.aio_get_status(bulk[0].run_id)
    assert status.value == "COMPLETED"


async def test_a_dag_passes_parent_outputs_to_children(
    hatchet_engine: HatchetTestEngine, main_worker: str, tasks: dict[str, Any], app: Any
) -> None:
    result = await tasks[app.DAG].aio_run(app.EchoInput(message="dag"))

    assert result == {"shout": {"upper": "DAG"}, "wrap": {"wrapped": "<DAG>"}}
    [run] = [r for r in hatchet_engine.runs(app.DAG) if r.input == {"message": "dag"}]
    shout, wrap = run.tasks["shout"], run.tasks["wrap"]
    assert shout.external_id != wrap.external_id != run.run_id
    assert shout.attempts[0].finished_at is not None
    assert wrap.attempts[0].assigned_at >= shout.attempts[0].finished_at


async def test_sync_run_polls_run_details(
    main_worker: str, tasks: dict[str, Any], app: Any
) -> None:
    result = await asyncio.to_thread(tasks[app.ECHO].run, app.EchoInput(message="sync"))

    assert result["echo"] == "sync"


async def test_a_worker_never_runs_more_tasks_than_its_slots(
    hatchet_engine: HatchetTestEngine,
    start_worker: StartWorker,
    tasks: dict[str, Any],
    app: Any,
) -> None:
    _, name = start_worker(app.SLOT_PROBE, slots=2)
    probe = tasks[app.SLOT_PROBE]

    results = await probe.aio_run_many(
        [probe.create_bulk_run_item(input=app.ProbeInput(index=i, seconds=0.4)) for i in range(6)]
    )

    # observed by the tasks themselves, inside the worker process
    assert max(r["max_seen"] for r in results) == 2
    # observed by the engine
    worker = hatchet_engine.worker(name)
    assert worker.max_concurrent == 2
    assert worker.assigned_total == 6
    # queued runs were assigned first in, first out
    mine = [r for r in hatchet_engine.runs(app.SLOT_PROBE) if r.task.worker_id == worker.worker_id]
    assigned = [
        r.task.attempts[0].assigned_at for r in sorted(mine, key=lambda r: r.input["index"])
    ]
    assert assigned == sorted(assigned)


async def test_sigterm_drains_running_tasks_and_exits_promptly(
    hatchet_engine: HatchetTestEngine,
    start_worker: StartWorker,
    hatchet_client: Hatchet,
    tasks: dict[str, Any],
    app: Any,
) -> None:
    proc, name = start_worker(app.SLOT_PROBE, slots=2)
    probe = tasks[app.SLOT_PROBE]
    ref = await probe.aio_run(app.ProbeInput(index=0, seconds=1.5), wait_for_result=False)
    await hatchet_engine.wait_until_async(_started(hatchet_engine, ref.workflow_run_id))

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await hatchet_engine.wait_until_async(lambda: hatchet_engine.worker(name).paused)
    late = await probe.aio_run(app.ProbeInput(index=1, seconds=0.1), wait_for_result=False)
    try:
        result = await ref.aio_result()
        assert result["index"] == 0  # the in-flight task finished during the graceful stop
        returncode = await asyncio.to_thread(proc.wait, 15)
        elapsed = time.monotonic() - started
        assert returncode == 0, proc.output()
        assert elapsed < 10
        # its action stream closed after draining (the SDK's Unsubscribe is fire-and-forget
        # and often lost as the process exits, so `gone` is not asserted)
        await hatchet_engine.wait_until_async(
            lambda: not hatchet_engine.worker(name).connected, timeout=5
        )
        # a paused worker gets no new work: the late run is still queued
        assert hatchet_engine.run(late.workflow_run_id).status == "QUEUED"
    finally:
        await hatchet_client.runs.aio_cancel(late.workflow_run_id)
    assert hatchet_engine.run(late.workflow_run_id).status == "CANCELLED"


SCRIPT = Path(__file__).resolve().parent / "engine_test_app.py"


async def test_a_lost_worker_s_tasks_are_reassigned(app: Any) -> None:
    script = SCRIPT
    with HatchetTestEngine(heartbeat_timeout=6.0) as engine:
        probe = app.build_tasks(engine.hatchet())[app.SLOT_PROBE]
        first = WorkerProcess(
            engine, script, "--name", "first", "--slots", "1", "--tasks", app.SLOT_PROBE
        )
        second = WorkerProcess(
            engine, script, "--name", "second", "--slots", "1", "--tasks", app.SLOT_PROBE
        )
        try:
            first.start()
            first.wait_registered("first")
            ref = await probe.aio_run(app.ProbeInput(index=7, seconds=1.0), wait_for_result=False)
            run_id = ref.workflow_run_id
            await engine.wait_until_async(_started(engine, run_id))

            first.kill()  # SIGKILL the whole process group: no unsubscribe, heartbeats stop
            second.start()
            result = await asyncio.wait_for(ref.aio_result(), timeout=30)

            assert result["index"] == 7
            task = engine.run(run_id).task
            assert [a.outcome for a in task.attempts] == ["REASSIGNED", "COMPLETED"]
            assert [a.retry_count for a in task.attempts] == [0, 0]  # not a retry
            assert task.attempts[0].worker_id == engine.worker("first").worker_id
            assert task.attempts[1].worker_id == engine.worker("second").worker_id
            assert engine.worker("first").gone
        finally:
            second.terminate(timeout=5)
            for proc in (first, second):
                proc.cleanup()
