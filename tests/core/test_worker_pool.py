"""``mageflow.testing.workers.WorkerPool``: start, restart what dies, stop everything."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mageflow.testing.workers import ENV_POOL, WorkerPool

SLEEPER = [sys.executable, "-c", "import os, time; print(os.environ['WHO']); time.sleep(120)"]


def wait_for(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_worker_is_restarted_and_stop_ends_all(tmp_path: Path) -> None:
    pool = WorkerPool(SLEEPER, tmp_path, processes=2, env={"WHO": "w"}, grace=1)
    with pool:
        wait_for(lambda: len(pool.live()) == 2)
        first = pool.workers[0]
        first.kill()  # as the crash tests' exit 137
        wait_for(lambda: len(pool.restarts) == 1 and len(pool.live()) == 2)
        assert pool.restarts[0][1] is first and len(pool.workers) == 3
    assert all(not w.alive() for w in pool.workers)
    assert len(pool.restarts) == 1, "workers the pool stopped are not restarted"
    wait_for(lambda: "w" in pool.workers[1].tail())


def test_probe_and_fault_dir_are_wired(tmp_path: Path) -> None:
    pool = WorkerPool(SLEEPER, tmp_path, probe_url="redis://h:1/0", fault_dir=tmp_path)
    env = pool.worker_env()
    assert env["MAGEFLOW_PROBE_URL"] == "redis://h:1/0"
    assert env["MAGEFLOW_FAULT_DIR"] == str(tmp_path)
    assert env[ENV_POOL] == pool.pool_id
    assert "MAGEFLOW_FAULT_DIR" not in WorkerPool(SLEEPER, tmp_path).worker_env()
