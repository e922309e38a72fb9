"""The taskiq transport against real components: redis-server, RedisStreamBroker and
``taskiq worker`` / ``run_worker`` processes running tests/taskiq/transport_app.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from mageflow.backend.base import HEADER_KEY, OutgoingTask
from mageflow_taskiq.backend import TaskiqBackend

if TYPE_CHECKING:
    from conftest import Worker, Workers

pytestmark = pytest.mark.slow

Key = Callable[[str], str]


async def records(rdb: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await rdb.lrange(key, 0, -1)]


async def wait_records(
    rdb: aioredis.Redis, key: str, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await records(rdb, key)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key}: wanted {count} records, got {await records(rdb, key)}")


def task(name: str, payload: Any, key: str = "sig-1", **headers: str) -> OutgoingTask:
    return OutgoingTask(f"transport.{name}", payload, {HEADER_KEY: key, **headers})


async def test_publish_runs_handler_with_payload_and_headers(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("cli")
    key = record_key("echo")
    payload = {"rec": key, "values": [1, "ü", None, 2.5, {"nested": True}]}

    # Published before the worker is up: the publisher created the consumer group.
    run_id = await publisher.publish(task("echo", payload, "sig-1", extra="x"))
    await workers.wait_ready(1, rdb)

    [seen] = await wait_records(rdb, key, 1)
    assert seen["payload"] == payload
    assert seen["headers"] == {HEADER_KEY: "sig-1", "extra": "x"}
    assert seen["task"] == "transport.echo"
    assert (seen["run_id"], seen["attempt"], seen["final"]) == (run_id, 1, True)

    many_key = record_key("many")
    outgoing = [task("echo", {"rec": many_key, "i": i}, f"sig-m{i}") for i in range(20)]
    run_ids = await publisher.publish_many(outgoing)
    assert len(set(run_ids)) == 20
    seen_many = await wait_records(rdb, many_key, 20)
    assert {s["run_id"]: s["payload"]["i"] for s in seen_many} == dict(
        zip(run_ids, range(20), strict=True)
    )
    assert {s["headers"][HEADER_KEY] for s in seen_many} == {f"sig-m{i}" for i in range(20)}


async def test_tasks_publish_from_inside_a_worker(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("run_worker")
    key = record_key("fanout")
    await publisher.publish(task("fanout", {"rec": key, "n": 5}))
    await workers.wait_ready(1, rdb)
    runs = await wait_records(rdb, key, 6)
    assert runs[0]["task"] == "transport.fanout"
    children = sorted(runs[1:], key=lambda r: r["payload"]["i"])
    assert [r["headers"][HEADER_KEY] for r in children] == [f"c{i}" for i in range(5)]


async def test_publish_does_not_wait_for_the_task(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("cli")
    await workers.wait_ready(1, rdb)
    key = record_key("slow")
    started = time.monotonic()
    await publisher.publish(task("slow", {"rec": key, "sleep": 2}))
    assert time.monotonic() - started < 0.5
    await wait_records(rdb, key, 2)


async def test_retries_count_attempts_and_flag_the_final_one(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("cli")
    always, second = record_key("always"), record_key("second")
    run_id = await publisher.publish(task("flaky", {"rec": always}))
    ok_id = await publisher.publish(task("flaky", {"rec": second, "succeed_on": 2}))
    await workers.wait_ready(1, rdb)

    runs = await wait_records(rdb, always, 4)  # retries=3: four attempts
    assert [(r["attempt"], r["final"]) for r in runs] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert {r["run_id"] for r in runs} == {run_id}
    assert {r["headers"][HEADER_KEY] for r in runs} == {"sig-1"}
    assert [r["attempt"] for r in await wait_records(rdb, second, 2)] == [1, 2]
    assert {r["run_id"] for r in await records(rdb, second)} == {ok_id}

    await asyncio.sleep(1.0)  # nothing after the final attempt, nothing after success
    assert len(await records(rdb, always)) == 4
    assert len(await records(rdb, second)) == 2


async def test_non_retryable_error_is_not_retried(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("cli")
    key = record_key("fatal")
    await publisher.publish(task("fatal", {"rec": key}))
    await workers.wait_ready(1, rdb)
    [only] = await wait_records(rdb, key, 1)
    assert (only["attempt"], only["final"]) == (1, False)  # retries=3, yet no retry
    await asyncio.sleep(1.5)
    assert len(await records(rdb, key)) == 1


async def test_two_worker_processes_both_consume(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    workers.start("cli", concurrency=1)
    workers.start("run_worker", concurrency=1)
    pids = await workers.wait_ready(2, rdb)
    key = record_key("spread")
    await publisher.publish_many([task("slow", {"rec": key, "sleep": 0.3}) for _ in range(8)])
    runs = [r for r in await wait_records(rdb, key, 16) if r["event"] == "end"]
    assert len(runs) == 8
    assert {r["pid"] for r in runs} == pids


async def test_killed_worker_message_is_redelivered_to_another_worker(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    idle_timeout, task_seconds = 2.0, 3.0
    by_pid: dict[int, Worker] = {}
    for _ in range(2):
        worker = workers.start("cli", idle_timeout=idle_timeout)
        [pid] = await workers.wait_ready(len(by_pid) + 1, rdb) - set(by_pid)
        by_pid[pid] = worker
    key = record_key("crash")
    run_id = await publisher.publish(task("slow", {"rec": key, "sleep": task_seconds}))
    [first] = await wait_records(rdb, key, 1)
    assert first["event"] == "start"
    doomed_pid = first["pid"]
    [survivor_pid] = set(by_pid) - {doomed_pid}

    await asyncio.sleep(0.3)
    killed_at = time.time()
    by_pid[doomed_pid].kill9()  # mid-task: the message was delivered, never acknowledged

    runs = await wait_records(rdb, key, 3, timeout=idle_timeout + 15)
    again = runs[1]
    assert (again["event"], again["pid"], again["run_id"]) == ("start", survivor_pid, run_id)
    assert again["attempt"] == 1  # a redelivery is not a retry
    assert runs[2]["event"] == "end"
    since_delivery = again["t"] - first["t"]
    since_kill = again["t"] - killed_at
    # Claimed once idle for idle_timeout; the scan runs at least every 2 s (xread_block).
    # The survivor runs it for longer than idle_timeout without losing it (claim renewal).
    assert idle_timeout - 0.1 <= since_delivery <= idle_timeout + 2.0 + 1.0
    print(
        f"\nredelivery after kill -9: {since_kill:.2f}s after the kill, "
        f"{since_delivery:.2f}s after the first delivery (idle_timeout={idle_timeout}s)"
    )
    await asyncio.sleep(idle_timeout + 2.5)  # acknowledged: not claimed a third time
    assert len(await records(rdb, key)) == 3
    assert by_pid[survivor_pid].proc.poll() is None


async def test_task_longer_than_idle_timeout_runs_once(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    """The worker renews its claim while the task runs: nobody else takes the message."""
    workers.start("cli", idle_timeout=1.0)
    workers.start("run_worker", idle_timeout=1.0)
    await workers.wait_ready(2, rdb)
    key = record_key("long")
    await publisher.publish(task("slow", {"rec": key, "sleep": 4}))
    runs = await wait_records(rdb, key, 2, timeout=15)
    await asyncio.sleep(2.5)  # more than one more scan period
    runs = await records(rdb, key)
    assert [r["event"] for r in runs] == ["start", "end"]


@pytest.mark.parametrize("kind", ["cli", "run_worker"])
async def test_sigterm_stops_an_idle_worker_quickly(
    kind: str, workers: Workers, rdb: aioredis.Redis
) -> None:
    worker = workers.start(kind)
    await workers.wait_ready(1, rdb)
    await asyncio.sleep(0.5)
    seconds = worker.stop()
    print(f"\n{kind} worker exited {seconds:.2f}s after SIGTERM")
    assert not worker.killed, f"needed SIGKILL:\n{worker.log_tail()}"
    assert seconds < 5


async def test_sigterm_lets_the_running_task_finish(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    worker = workers.start("run_worker")
    await workers.wait_ready(1, rdb)
    key = record_key("graceful")
    await publisher.publish(task("slow", {"rec": key, "sleep": 1.5}))
    await wait_records(rdb, key, 1)
    seconds = worker.stop()
    assert not worker.killed, worker.log_tail()
    assert [r["event"] for r in await records(rdb, key)] == ["start", "end"]
    assert 1.0 < seconds < 6


async def test_a_dead_workers_messages_are_claimed_one_free_slot_at_a_time(
    workers: Workers, publisher: TaskiqBackend, rdb: aioredis.Redis, record_key: Key
) -> None:
    """Three messages of a killed worker, two survivors with one slot each and tasks
    longer than idle_timeout: a survivor must not claim messages it cannot run yet (they
    would wait, unrenewed, until another worker claims them too and both run them)."""
    idle_timeout, task_seconds = 1.0, 3.0
    victim = workers.start("cli", idle_timeout=idle_timeout, concurrency=3)
    await workers.wait_ready(1, rdb)
    key = record_key("hoard")
    run_ids = await publisher.publish_many(
        [task("slow", {"rec": key, "sleep": task_seconds, "i": i}, f"sig-{i}") for i in range(3)]
    )
    await wait_records(rdb, key, 3)  # all three started on the victim
    victim.kill9()
    workers.start("cli", idle_timeout=idle_timeout, concurrency=1)
    workers.start("run_worker", idle_timeout=idle_timeout, concurrency=1)

    # each message runs once more, to its end
    await wait_records(rdb, key, 3 + 2 * 3, timeout=40)
    await asyncio.sleep(idle_timeout + 2.5)  # and no third time
    runs = await records(rdb, key)
    starts = [r["run_id"] for r in runs if r["event"] == "start"]
    assert sorted(starts) == sorted(run_ids * 2), runs
