"""Plugin hooks, entry-point discovery and configuration."""

from mageflow.plugins.hookspecs import BackendSpec, hookimpl, hookspec
from mageflow.plugins.manager import backend_specs, load_backend_class
from mageflow.plugins.settings import MageflowSettings

__all__ = [
    "BackendSpec",
    "MageflowSettings",
    "backend_specs",
    "hookimpl",
    "hookspec",
    "load_backend_class",
]
