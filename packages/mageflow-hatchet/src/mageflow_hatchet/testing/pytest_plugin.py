"""The test engine's pytest fixtures under their documented plugin name.

``pytest_plugins = ["mageflow_hatchet.testing.pytest_plugin"]`` gives ``hatchet_engine``
and ``hatchet_client`` (see :mod:`mageflow_hatchet_testengine.pytest_plugin`).
"""

from __future__ import annotations

import mageflow_hatchet.testing  # noqa: F401  (says what to install when it is missing)
from mageflow_hatchet_testengine.pytest_plugin import hatchet_client, hatchet_engine

__all__ = ["hatchet_client", "hatchet_engine"]
