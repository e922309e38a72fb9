"""The CLI as a user runs it: real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mageflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[arg-type]
    )


def test_backends_lists_local_with_version() -> None:
    out = run("backends")
    assert out.returncode == 0, out.stderr
    assert "local" in out.stdout
    assert "mageflow-core" in out.stdout


def test_demo_runs_every_part() -> None:
    out = run("demo", env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "chain" in out.stdout and "-> 45" in out.stdout
    peak = re.search(r"peak concurrency (\d+) \(cap 3\)", out.stdout)
    assert peak is not None
    assert 1 <= int(peak.group(1)) <= 3
    assert out.stdout.count("upload report.pdf: attempt failed") == 3
    assert out.stdout.count("error callback: ConnectionError") == 1
    assert "-> [15, 15, 15]" in out.stdout
    assert "{'receipt': 'receipt for 25 (upload failed)'}" in out.stdout
    assert "-> 30 (case 'big' skipped)" in out.stdout


def test_worker_rejects_bad_target(tmp_path: Path) -> None:
    out = run("worker", "nosuchmodule:mf", cwd=tmp_path)
    assert out.returncode != 0
    assert "cannot import 'nosuchmodule'" in out.stderr


def test_local_worker_serves_until_interrupted(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from mageflow import Mageflow\nmf = Mageflow(backend='local')\n"
        "@mf.task('t')\nasync def t(m):\n    return 1\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mageflow", "worker", "app:mf"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline and not any("tasks" in x for x in lines):
            lines.append(proc.stdout.readline() if proc.stdout else "")
        banner = "".join(lines)
        assert "mageflow worker backend=local" in banner
        assert "store    memory://" in banner and "tasks    1: t" in banner
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_broken_plugin_is_reported_and_others_still_work(tmp_path: Path) -> None:
    # a real installed distribution (dist-info on sys.path) whose entry point cannot import
    dist = tmp_path / "broken_adapter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-adapter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mageflow]\nbroken = no_such_module_xyz.plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}
    out = run("backends", env=env)
    assert out.returncode == 0, out.stderr
    assert "broken" in out.stdout and "failed to load" in out.stdout
    assert "local" in out.stdout
    code = (
        "from mageflow import Mageflow\n"
        "from mageflow.errors import ConfigurationError\n"
        "Mageflow(backend='local')\n"
        "try:\n    Mageflow(backend='broken')\n"
        "except ConfigurationError as e:\n    print('refused:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "refused: backend 'broken' is installed but its plugin failed to load" in out.stdout
