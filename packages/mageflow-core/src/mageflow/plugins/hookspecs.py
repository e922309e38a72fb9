"""pluggy hook specifications. Adapters implement ``register_backends`` in the module
they name under the ``mageflow`` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pluggy

PROJECT = "mageflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class BackendSpec:
    """How to find a backend without importing its SDK until it is chosen.

    ``target`` is ``"module:Class"`` of a :class:`mageflow.backend.TaskBackend` subclass.
    ``native_modules`` are top-level modules whose objects (a Hatchet client, a taskiq
    broker) select this backend when passed positionally to ``Mageflow(obj)``.
    """

    name: str
    target: str
    native_modules: tuple[str, ...] = ()
    distribution: str | None = None


class BackendHooks:
    @hookspec
    def register_backends(self, register: Callable[[BackendSpec], None]) -> None:
        """Call ``register(BackendSpec(...))`` once per backend this plugin provides."""
