"""Pytest fixtures for the Hatchet test engine.

Enable them from a ``conftest.py``::

    pytest_plugins = ["mageflow_hatchet_testengine.pytest_plugin"]

Fixtures:

- ``hatchet_engine`` (session): a started :class:`HatchetTestEngine`. Its ports are
  ephemeral, so it is safe under ``pytest-xdist`` (one engine per worker process).
- ``hatchet_client`` (function): a new Hatchet client bound to the engine. One client per
  test keeps every client on a single event loop (a client reused across event loops
  hangs in ``aio_result``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from mageflow_hatchet_testengine.engine import HatchetTestEngine

if TYPE_CHECKING:
    from hatchet_sdk import Hatchet


@pytest.fixture(scope="session")
def hatchet_engine() -> Iterator[HatchetTestEngine]:
    """A Hatchet test engine shared by the whole test session."""
    with HatchetTestEngine() as engine:
        yield engine


@pytest.fixture
def hatchet_client(hatchet_engine: HatchetTestEngine) -> Hatchet:
    """A fresh Hatchet client bound to :func:`hatchet_engine`."""
    return hatchet_engine.hatchet()
