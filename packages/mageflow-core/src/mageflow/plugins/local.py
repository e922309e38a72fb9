"""Registers the built-in ``local`` backend through the same entry point as any adapter."""

from __future__ import annotations

from collections.abc import Callable

from mageflow.plugins.hookspecs import BackendSpec, hookimpl


@hookimpl
def register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(
        BackendSpec(
            name="local",
            target="mageflow.backend.local:LocalBackend",
            distribution="mageflow-core",
        )
    )
