"""Each docs page's test example passes when copied into an empty project.

One fresh venv (outside the repository, only what the pages say to install) serves every
page; each page's files go into an empty directory and pytest runs there with none of this
repository's conftest, configuration or ``PYTHONPATH``. A page must also name, itself, every
distribution its files import (directly or through what it installs): the shared venv
cannot hide a page that forgot one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.fresh_project import ROOT, Example, FreshVenv, page_example

DOCS = ROOT / "docs"
# the adapter guide's harness examples are another engineer's: they point this helper at
# them when their rewrite lands
PAGES = [
    p
    for p in sorted(DOCS.rglob("*.md"))
    if "examples" not in p.parts and p.name != "adapters.md" and page_example(p).has_tests
]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fresh_venv")]

CLOSURE = r"""
import importlib.metadata as md, json, re, sys
from packaging.requirements import Requirement

def canon(name): return re.sub(r"[-_.]+", "-", name).lower()

requirements, modules = json.loads(sys.argv[1])
have, stack = set(), [Requirement(r) for r in requirements]
while stack:
    req = stack.pop()
    key = (canon(req.name), frozenset(req.extras))
    if key in have:
        continue
    have.add(key)
    for line in md.distribution(req.name).requires or []:
        dep = Requirement(line)
        if dep.marker is None or any(
            dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})
        ):
            stack.append(dep)
names = {name for name, _ in have}
owners = md.packages_distributions()
print(json.dumps(sorted(
    m for m in modules if not {canon(d) for d in owners.get(m, [m])} & names
)))
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    requirements = sorted({r for page in PAGES for r in page_example(page).installs})
    return FreshVenv.create(tmp_path_factory.mktemp("fresh") / "venv", requirements)


def imported_distributions_missing(example: Example, venv: FreshVenv) -> list[str]:
    """Top-level modules the example imports that none of its own installs provide."""
    local = {Path(name).stem for name in example.files}
    modules = {"pytest_asyncio"}  # asyncio_mode = "auto" is pytest-asyncio's setting
    for name, text in example.files.items():
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    modules -= local | set(sys.stdlib_module_names)
    out = subprocess.run(
        [str(venv.python), "-c", CLOSURE, json.dumps([example.installs, sorted(modules)])],
        env=venv.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_some_pages_have_test_examples() -> None:
    assert {p.name for p in PAGES} >= {"testing.md", "testing-hatchet.md"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_example_passes_in_a_fresh_project(
    page: Path, fresh_venv: FreshVenv, tmp_path: Path
) -> None:
    example = page_example(page)
    assert example.installs, f"{page.name}: says nothing to `pip install`"
    assert "pyproject.toml" in example.files, f"{page.name}: shows no `# pyproject.toml`"
    missing = imported_distributions_missing(example, fresh_venv)
    assert not missing, f"{page.name}: imports {missing}, which its `pip install` lacks"
    result = fresh_venv.run_pytest(example.write(tmp_path / "project"))
    assert result.returncode == 0, f"{page.name} as copied:\n{result.output}"
    assert " passed" in result.output and " skipped" not in result.output
