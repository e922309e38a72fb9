"""Every package builds into distributions ready to publish.

Each package under ``packages/`` is built (``uv build``, else ``python -m build``) into a
wheel and an sdist; ``twine check --strict`` must pass on all of them, and their metadata
must carry what PyPI shows a user: the MIT licence (expression and file), the Python,
typing and asyncio classifiers, project URLs, the package's README as a real long
description, and ``requires-python``.
"""

from __future__ import annotations

import email.message
import email.parser
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
PYTHONS = {"3.10", "3.11", "3.12", "3.13"}
URLS = {"Homepage", "Documentation", "Repository", "Issues"}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributions")]


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv")
    for package in PACKAGES:
        source = str(ROOT / "packages" / package)
        if uv:
            _run([uv, "build", "-q", "--sdist", "--wheel", "-o", str(out), source])
        else:
            _run([sys.executable, "-m", "build", "-o", str(out), source])
    return out


def _metadata(dist_dir: Path, package: str, kind: str) -> tuple[email.message.Message, set[str]]:
    stem = package.replace("-", "_")
    if kind == "wheel":
        [wheel] = dist_dir.glob(f"{stem}-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
            text = zf.read(meta).decode()
    else:
        [sdist] = dist_dir.glob(f"{stem}-*.tar.gz")
        with tarfile.open(sdist) as tf:
            names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
            [info] = [
                m
                for m in tf.getmembers()
                if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
            ]
            handle = tf.extractfile(info)
            assert handle is not None
            text = handle.read().decode()
    return email.parser.Parser().parsestr(text), names


def test_twine_check_passes_on_every_distribution(dist_dir: Path) -> None:
    files = sorted(str(p) for p in dist_dir.iterdir() if p.suffix in (".whl", ".gz"))
    assert len(files) == 2 * len(PACKAGES), files
    uv = shutil.which("uv")
    if importlib.util.find_spec("twine") is not None:
        cmd = [sys.executable, "-m", "twine"]
    else:
        assert uv, "neither twine nor uv is installed: pip install 'twine>=6.1'"
        cmd = [uv, "tool", "run", "--from", "twine>=6.1", "twine"]
    out = _run([*cmd, "check", "--strict", *files])
    assert out.count("PASSED") == len(files), out


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
@pytest.mark.parametrize("package", PACKAGES)
def test_metadata_is_ready_to_publish(dist_dir: Path, package: str, kind: str) -> None:
    meta, names = _metadata(dist_dir, package, kind)
    assert meta["Name"] == package
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith("LICENSE") for n in names), "the licence file is not shipped"
    assert "MIT License" in (ROOT / "packages" / package / "LICENSE").read_text()
    classifiers = set(meta.get_all("Classifier") or [])
    pythons = {
        c.rsplit(" :: ", 1)[1] for c in classifiers if c.count(".") == 1 and "Python ::" in c
    }
    assert pythons == PYTHONS
    assert {"Typing :: Typed", "Framework :: AsyncIO"} <= classifiers
    assert meta["Requires-Python"] == ">=3.10"
    urls = {u.split(",", 1)[0] for u in meta.get_all("Project-URL") or []}
    assert urls >= URLS
    description = meta.get_payload()
    assert isinstance(description, str)
    assert meta["Description-Content-Type"] == "text/markdown"
    assert len(description) > 1000 and "## Install" in description, "a real long description"
    assert "pip install" in description


def test_the_hatchet_pin_binds_only_the_test_engine(dist_dir: Path) -> None:
    """The adapter accepts every SDK release below the next major; the engine, which speaks
    one release's wire protocol, pins that release, and comes only with the extra."""
    adapter, _ = _metadata(dist_dir, "mageflow-hatchet", "wheel")
    engine, engine_files = _metadata(dist_dir, "mageflow-hatchet-testengine", "wheel")
    requires = adapter.get_all("Requires-Dist") or []
    [sdk] = [r for r in requires if r.startswith("hatchet-sdk")]
    assert "<2" in sdk and "<1.44" not in sdk
    assert any("mageflow-hatchet-testengine" in r and "extra == 'testing'" in r for r in requires)
    [engine_sdk] = [r for r in engine.get_all("Requires-Dist") or [] if r.startswith("hatchet-sdk")]
    assert "<1.44" in engine_sdk
    assert not any(r.startswith("mageflow") for r in engine.get_all("Requires-Dist") or [])
    assert "mageflow_hatchet_testengine/scheduler.py" in engine_files
