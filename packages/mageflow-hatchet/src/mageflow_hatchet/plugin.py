"""Entry point of the ``hatchet`` backend. Imports nothing from hatchet_sdk until chosen."""

from __future__ import annotations

from collections.abc import Callable

from mageflow.plugins.hookspecs import BackendSpec, hookimpl


@hookimpl
def register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="hatchet",
            target="mageflow_hatchet.backend:HatchetBackend",
            native_option="hatchet",
            native_modules=("hatchet_sdk",),
            distribution="mageflow-hatchet",
        )
    )
