"""MageFlow: write task orchestration once, run it on the task manager you already use.

The module-level functions use the default instance: the first :class:`Mageflow` created
in this process, else one built from the environment on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from mageflow import errors
from mageflow.app import Mageflow, default_instance
from mageflow.backend.base import Capabilities, RunContext, TaskBackend, TaskDefinition
from mageflow.flows.build import Callbacks, TaskLike
from mageflow.flows.graph import GraphNode, NodeSpec
from mageflow.flows.handles import (
    BranchSignature,
    ChainSignature,
    GraphSignature,
    Signature,
    SwarmSignature,
)
from mageflow.flows.tasks import current_task
from mageflow.models import (
    Backoff,
    ReturnValue,
    SignatureState,
    SignatureStatus,
    SwarmConfig,
    TaskContext,
)
from mageflow.models.options import Options

__version__ = "0.1.0"

F = TypeVar("F", bound=Callable[..., Any])


async def sign(
    task: TaskLike | None = None,
    *,
    task_name: str | None = None,
    task_identifiers: dict[str, Any] | None = None,
    success_callbacks: Callbacks = None,
    error_callbacks: Callbacks = None,
    mageflow_options: Options | None = None,
    **kwargs: Any,
) -> Signature:
    """:meth:`Mageflow.sign` on the default instance."""
    return await default_instance().sign(
        task,
        task_name=task_name,
        task_identifiers=task_identifiers,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        mageflow_options=mageflow_options,
        **kwargs,
    )


async def chain(
    tasks: Sequence[TaskLike],
    *,
    name: str | None = None,
    success: Callbacks = None,
    error: Callbacks = None,
    mageflow_options: Options | None = None,
    **kwargs: Any,
) -> ChainSignature:
    """:meth:`Mageflow.chain` on the default instance."""
    return await default_instance().chain(
        tasks, name=name, success=success, error=error, mageflow_options=mageflow_options, **kwargs
    )


async def swarm(
    tasks: Sequence[TaskLike] = (),
    *,
    success_callbacks: Callbacks = None,
    error_callbacks: Callbacks = None,
    config: SwarmConfig | None = None,
    is_swarm_closed: bool = False,
    task_name: str | None = None,
    mageflow_options: Options | None = None,
    **kwargs: Any,
) -> SwarmSignature:
    """:meth:`Mageflow.swarm` on the default instance."""
    return await default_instance().swarm(
        tasks,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        config=config,
        is_swarm_closed=is_swarm_closed,
        task_name=task_name,
        mageflow_options=mageflow_options,
        **kwargs,
    )


async def swarm_of(
    task: TaskLike,
    items: Iterable[Mapping[str, Any]],
    *,
    success_callbacks: Sequence[TaskLike] | TaskLike | None = None,
    error_callbacks: Sequence[TaskLike] | TaskLike | None = None,
    config: SwarmConfig | None = None,
    is_swarm_closed: bool = False,
    task_name: str | None = None,
) -> SwarmSignature:
    """:meth:`Mageflow.swarm_of` on the default instance."""
    return await default_instance().swarm_of(
        task,
        items,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        config=config,
        is_swarm_closed=is_swarm_closed,
        task_name=task_name,
    )


async def graph(
    nodes: Mapping[str, NodeSpec],
    *,
    name: str | None = None,
    max_concurrency: int | None = None,
    stop_after_n_failures: int | None = 1,
    success_callbacks: Callbacks = None,
    error_callbacks: Callbacks = None,
    mageflow_options: Options | None = None,
    **kwargs: Any,
) -> GraphSignature:
    """:meth:`Mageflow.graph` on the default instance."""
    return await default_instance().graph(
        nodes,
        name=name,
        max_concurrency=max_concurrency,
        stop_after_n_failures=stop_after_n_failures,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        mageflow_options=mageflow_options,
        **kwargs,
    )


async def branch(
    selector: TaskLike,
    cases: Mapping[str, TaskLike],
    *,
    default: TaskLike | None = None,
    name: str | None = None,
    success_callbacks: Callbacks = None,
    error_callbacks: Callbacks = None,
    mageflow_options: Options | None = None,
    **kwargs: Any,
) -> BranchSignature:
    """:meth:`Mageflow.branch` on the default instance."""
    return await default_instance().branch(
        selector,
        cases,
        default=default,
        name=name,
        success_callbacks=success_callbacks,
        error_callbacks=error_callbacks,
        mageflow_options=mageflow_options,
        **kwargs,
    )


async def load(key: str) -> Signature:
    """:meth:`Mageflow.load` on the default instance."""
    return await default_instance().load(key)


async def find_by_identifiers(identifiers: dict[str, Any], *, limit: int = 100) -> list[str]:
    """:meth:`Mageflow.find_by_identifiers` on the default instance."""
    return await default_instance().find_by_identifiers(identifiers, limit=limit)


def register_task(name: str | None = None, **options: Any) -> Callable[[F], F]:
    """``@mageflow.register_task("name")``: :meth:`Mageflow.task` on the default instance."""
    return default_instance().task(name, **options)


def handle_task_callback() -> Callable[[F], F]:
    """Accepted for compatibility: every MageFlow task already handles its callbacks."""

    def decorate(fn: F) -> F:
        return fn

    return decorate


__all__ = [
    "Backoff",
    "BranchSignature",
    "Capabilities",
    "ChainSignature",
    "GraphNode",
    "GraphSignature",
    "Mageflow",
    "Options",
    "ReturnValue",
    "RunContext",
    "Signature",
    "SignatureState",
    "SignatureStatus",
    "SwarmConfig",
    "SwarmSignature",
    "TaskBackend",
    "TaskContext",
    "TaskDefinition",
    "TaskLike",
    "__version__",
    "branch",
    "chain",
    "current_task",
    "errors",
    "find_by_identifiers",
    "graph",
    "handle_task_callback",
    "load",
    "register_task",
    "sign",
    "swarm",
    "swarm_of",
]
