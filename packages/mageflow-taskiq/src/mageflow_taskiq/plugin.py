"""Entry point of the ``taskiq`` backend. Imports nothing from taskiq until it is chosen."""

from __future__ import annotations

from collections.abc import Callable

from mageflow.plugins.hookspecs import BackendSpec, hookimpl


@hookimpl
def register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="taskiq",
            target="mageflow_taskiq.backend:TaskiqBackend",
            native_option="broker",
            native_modules=("taskiq", "taskiq_redis"),
            distribution="mageflow-taskiq",
        )
    )
