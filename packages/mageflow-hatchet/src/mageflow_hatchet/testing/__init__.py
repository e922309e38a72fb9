"""The in-process Hatchet test engine under its documented import path.

The engine is its own distribution, ``mageflow-hatchet-testengine`` (import
``mageflow_hatchet_testengine``), because it speaks one hatchet-sdk release's wire
protocol and pins the SDK that tightly; ``mageflow-hatchet`` itself accepts a wide SDK
range. Install it with ``pip install 'mageflow-hatchet[testing]'``; this module then
re-exports its public API, and ``mageflow_hatchet.testing.pytest_plugin`` its fixtures.
"""

from __future__ import annotations

try:
    import mageflow_hatchet_testengine as _engine
except ModuleNotFoundError as exc:  # pragma: no cover - depends on what is installed
    if exc.name != "mageflow_hatchet_testengine":
        raise
    raise ModuleNotFoundError(
        "the Hatchet test engine is not installed: "
        "pip install 'mageflow-hatchet[testing]' (it pins hatchet-sdk to the release whose "
        "wire protocol it speaks)",
        name=exc.name,
    ) from exc

from mageflow_hatchet_testengine import *  # noqa: F403

__all__ = list(_engine.__all__)
