"""The harness files of docs/adapters.md run as written in a fresh project.

The page's ``python title="<file>"`` blocks and the example adapter are written to an
empty directory outside this repository (no conftest, no pytest configuration of ours)
and pytest runs there in a subprocess, with only the installed packages importable. It
runs the guide's in-process and worker-subprocess harnesses on a subset of the contract
that covers plain workflows, the crash window and the delivery contract.

A minimal fresh-project runner: a new directory with this interpreter, not a fresh
virtualenv (none is built here; see the report of issue 14).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "adapters.md"
FILE_BLOCK = re.compile(r'^```python title="([^"]+)"\n(.*?)^```', re.S | re.M)
SUBSET = "chain_passes_results or crash_between or attempts_are or non_retryable or cores_timeout"

pytestmark = pytest.mark.slow


def guide_files() -> dict[str, str]:
    files = dict(FILE_BLOCK.findall(GUIDE.read_text()))
    files["redis_list_adapter.py"] = (ROOT / "docs/examples/redis_list_adapter.py").read_text()
    return files


def test_the_guide_names_its_files() -> None:
    assert set(guide_files()) == {
        "redis_list_adapter.py",
        "test_contract_inprocess.py",
        "worker_app.py",
        "test_contract_workers.py",
    }


def test_the_guides_harnesses_pass_in_a_fresh_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name, text in guide_files().items():
        (project / name).write_text(text)
    installed = [p for p in sys.path if p and not Path(p).resolve().is_relative_to(ROOT)]
    src = [str(ROOT / "packages" / p / "src") for p in ("mageflow-core",)]  # as pip installs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGEFLOW_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([*src, *installed])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SUBSET]
    done = subprocess.run(
        [*cmd, "--rootdir", str(project)], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = done.stdout[-5000:] + done.stderr[-2000:]
    assert done.returncode == 0, out
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) == 10, out
