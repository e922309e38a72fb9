"""pluggy hook specifications. Adapters implement ``register_backends`` in the module
they name under the ``mageflow`` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pluggy

from mageflow.models.events import WorkflowEvent

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
    native_option: str = "native"
    """The backend option a native object is passed as (``broker``, ``hatchet`` ...)."""
    distribution: str | None = None


class BackendHooks:
    @hookspec
    def register_backends(self, register: Callable[[BackendSpec], None]) -> None:
        """Call ``register(BackendSpec(...))`` once per backend this plugin provides."""


class ObserverHooks:
    """Called on workflow events, in the process where they happen (a worker for task
    events, the caller for suspend/resume). Keep implementations quick and non-blocking;
    an exception is logged and never breaks the workflow."""

    @hookspec
    def mageflow_task_started(self, event: WorkflowEvent) -> None:
        """A delivery is about to run the task's code (``attempt``, ``run_id`` set)."""

    @hookspec
    def mageflow_task_succeeded(self, event: WorkflowEvent) -> None:
        """The task returned; its result is stored."""

    @hookspec
    def mageflow_task_failed(self, event: WorkflowEvent) -> None:
        """The final attempt failed (``error`` set); error callbacks were published."""

    @hookspec
    def mageflow_task_retried(self, event: WorkflowEvent) -> None:
        """A non-final attempt failed; the task manager will retry."""

    @hookspec
    def mageflow_chain_advanced(self, event: WorkflowEvent) -> None:
        """Chain ``key`` started its next step ``related``."""

    @hookspec
    def mageflow_swarm_item_done(self, event: WorkflowEvent) -> None:
        """Swarm ``key``: item ``related`` finished (``status`` done or failed)."""

    @hookspec
    def mageflow_workflow_finished(self, event: WorkflowEvent) -> None:
        """A chain, a swarm or a top-level signature finished (``status``)."""

    @hookspec
    def mageflow_workflow_suspended(self, event: WorkflowEvent) -> None:
        """Suspended or interrupted (``status``) by a caller."""

    @hookspec
    def mageflow_workflow_resumed(self, event: WorkflowEvent) -> None:
        """Resumed by a caller."""

    @hookspec
    def mageflow_workflow_retried(self, event: WorkflowEvent) -> None:
        """A failed workflow was retried by a caller: its failed parts run again."""
