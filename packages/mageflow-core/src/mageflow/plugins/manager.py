"""Entry-point discovery (group ``mageflow``) with pluggy, and backend selection by name.

``MAGEFLOW_PLUGINS=a,b`` restricts which entry points load; ``MAGEFLOW_TRACE_PLUGINS=1``
logs every hook call.
"""

from __future__ import annotations

import importlib
import logging
import os
from functools import lru_cache
from importlib import metadata

import pluggy

from mageflow.backend.base import TaskBackend
from mageflow.errors import ConfigurationError, UnknownBackendError
from mageflow.plugins.hookspecs import PROJECT, BackendHooks, BackendSpec, ObserverHooks

log = logging.getLogger("mageflow.plugins")


broken_plugins: dict[str, str] = {}
"""Entry points that failed to import, with the error: one broken adapter must not take
the others (or the core) down with it; ``mageflow backends`` shows them."""


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(BackendHooks)
    pm.add_hookspecs(ObserverHooks)
    allowed = os.environ.get("MAGEFLOW_PLUGINS")
    wanted = {n.strip() for n in allowed.split(",") if n.strip()} if allowed else None
    for ep in metadata.entry_points(group=PROJECT):
        if (wanted is not None and ep.name not in wanted) or pm.get_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            broken_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("mageflow plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
    if os.environ.get("MAGEFLOW_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.info("%s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def backend_specs() -> dict[str, BackendSpec]:
    """Installed backends by name."""
    found: dict[str, BackendSpec] = {}
    plugin_manager().hook.register_backends(register=lambda spec: found.setdefault(spec.name, spec))
    return found


def load_backend_class(name: str) -> type[TaskBackend]:
    specs = backend_specs()
    spec = specs.get(name)
    if spec is None and name in broken_plugins:
        raise ConfigurationError(
            f"backend {name!r} is installed but its plugin failed to load: {broken_plugins[name]}"
        )
    if spec is None:
        raise UnknownBackendError(name, specs)
    module_name, _, attr = spec.target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise ConfigurationError(
            f"backend {name!r} is registered but cannot be imported ({exc}); reinstall "
            f"{spec.distribution or 'its package'}"
        ) from exc


def backend_for_native(obj: object) -> BackendSpec | None:
    """The backend whose SDK the object (a client, a broker) comes from."""
    modules = {cls.__module__.split(".")[0] for cls in type(obj).__mro__}
    for spec in backend_specs().values():
        if modules.intersection(spec.native_modules):
            return spec
    return None


def distribution_version(spec: BackendSpec) -> str:
    if spec.distribution is None:
        return "?"
    try:
        return metadata.version(spec.distribution)
    except metadata.PackageNotFoundError:
        return "?"


def register_observer(plugin: object, name: str | None = None) -> None:
    """Register an object implementing observer hooks (``@hookimpl`` methods)."""
    plugin_manager().register(plugin, name=name)


def unregister_observer(plugin: object) -> None:
    plugin_manager().unregister(plugin)
