"""The engine's documented import paths under ``mageflow_hatchet`` keep working."""

from __future__ import annotations

import subprocess
import sys

import mageflow_hatchet.testing
import mageflow_hatchet.testing.pytest_plugin
import mageflow_hatchet_testengine
import mageflow_hatchet_testengine.pytest_plugin


def test_mageflow_hatchet_testing_is_the_engine() -> None:
    assert mageflow_hatchet.testing.__all__ == mageflow_hatchet_testengine.__all__
    for name in mageflow_hatchet_testengine.__all__:
        assert getattr(mageflow_hatchet.testing, name) is getattr(mageflow_hatchet_testengine, name)
    plugin, engine_plugin = (
        mageflow_hatchet.testing.pytest_plugin,
        mageflow_hatchet_testengine.pytest_plugin,
    )
    assert plugin.hatchet_engine is engine_plugin.hatchet_engine
    assert plugin.hatchet_client is engine_plugin.hatchet_client


def test_without_the_engine_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['mageflow_hatchet_testengine'] = None\n"
        "try:\n"
        "    import mageflow_hatchet.testing\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'mageflow-hatchet[testing]'" in out.stdout
