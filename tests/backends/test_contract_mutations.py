"""The contract suite tests itself: each broken variant of the local backend
(``mutants.py``) fails at least one contract test; the real backend passes the same ones.

Every case runs ``mutant_contract.py`` in a pytest subprocess, only the contract tests
that guard the broken promise (``-k``), stopping at the first failure (``-x``): a few
seconds each, and the cases spread over xdist workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]
MODULE = Path(__file__).with_name("mutant_contract.py")
EVERY_GUARD = " or ".join(f"({expr})" for _, expr in MUTANTS.values())


def run_contract(mutant: str, select: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAGEFLOW_MUTANT": mutant}
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", str(MODULE), "-q", "-x", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:xdist", "-k", select]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_contract_catches(mutant: str) -> None:
    done = run_contract(mutant, MUTANTS[mutant][1])
    tail = done.stdout[-3000:]
    assert done.returncode == 1, f"{mutant}: nothing failed (rc {done.returncode}):\n{tail}"
    assert " failed" in tail, tail


def test_the_real_backend_passes_every_guard() -> None:
    done = run_contract("none", EVERY_GUARD)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-3000:]
