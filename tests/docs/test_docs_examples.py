"""Every Python example in docs/ runs.

Each page's ```python blocks run top to bottom in one namespace (top-level ``await``
allowed), in a fresh thread with no event loop, from an empty working directory, with
snippet includes (``--8<--``) expanded. A block that defines pytest tests is written to a
file and run by pytest in a subprocess, so its tests really execute.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import mageflow.app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
ALL_PAGES = sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.parts)
README = ROOT / "README.md"


def blocks(page: Path) -> list[str]:
    text = page.read_text()
    out = []
    for block in FENCE.findall(text):
        out.append(SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(), block))
    return out


def run_block(code: str, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    compiled = compile(
        code, "<docs>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    if compiled.co_flags & 0x80:  # CO_COROUTINE: the block awaits at top level
        loop.run_until_complete(types.FunctionType(compiled, namespace)())
    else:
        exec(compiled, namespace)


def run_page(page: Path) -> None:
    errors: list[BaseException] = []

    def target() -> None:
        loop = asyncio.new_event_loop()
        module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
        sys.modules[module.__name__] = module  # so pydantic and dataclasses resolve names
        namespace = module.__dict__
        try:
            for code in blocks(page):
                if re.search(r"^(async )?def test_", code, re.M):
                    run_as_pytest(page, code)
                else:
                    run_block(code, namespace, loop)
        except BaseException as exc:
            errors.append(exc)
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:

                async def drain() -> None:
                    await asyncio.gather(*pending, return_exceptions=True)

                loop.run_until_complete(drain())
            loop.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), f"{page.name}: examples did not finish"
    if errors:
        raise errors[0]


def run_as_pytest(page: Path, code: str) -> None:
    test_file = Path.cwd() / f"test_docs_{page.stem.replace('-', '_')}.py"
    test_file.write_text(code)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(Path.cwd()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{page.name}: its tests failed\n{out.stdout}\n{out.stderr}"
    assert " passed" in out.stdout


@pytest.fixture
def page_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(os.environ):
        if name.startswith(("MAGEFLOW_", "HATCHET_CLIENT_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(mageflow.app, "_default", None)
    return tmp_path


PACKAGE_READMES = sorted((ROOT / "packages").glob("*/README.md"))  # the PyPI descriptions
PAGES = [p for p in [README, *PACKAGE_READMES, *ALL_PAGES] if blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, page_env: Path) -> None:
    run_page(page)


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in ALL_PAGES:
        assert str(page.relative_to(DOCS)) in nav, f"{page} missing from mkdocs.yml nav"
