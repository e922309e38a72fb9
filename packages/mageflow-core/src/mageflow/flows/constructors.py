"""The workflow constructors of :class:`mageflow.Mageflow`: :meth:`~WorkflowConstructors.sign`,
``chain``, ``swarm``, ``swarm_of``, ``graph`` and ``branch``. Each builds one new workflow
with a :class:`~mageflow.flows.build.WorkflowBuilder` and writes it at once, returning its
handle."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from mageflow.engine import ROOT, Engine
from mageflow.engine import fields as F
from mageflow.errors import InvalidTaskError, SignatureInUseError
from mageflow.flows.build import (
    Callbacks,
    TaskLike,
    WorkflowBuilder,
    callbacks_of,
    new_workflow_id,
    unique_item_ids,
)
from mageflow.flows.graph import NodeSpec, build_branch, build_graph, graph_nodes
from mageflow.flows.handles import (
    BranchSignature,
    ChainSignature,
    GraphSignature,
    Signature,
    SwarmSignature,
)
from mageflow.flows.runtime import Runtime
from mageflow.models.config import SwarmConfig
from mageflow.models.options import Options
from mageflow.models.signatures import NodeDef, check_name


class WorkflowHost(Runtime, Protocol):
    """What the constructors use of the application: the runtime, and its engine as it
    is (building needs no shared store yet: the write checks that)."""

    _engine: Engine


def _new_workflow(host: WorkflowHost) -> WorkflowBuilder:
    """The builder of a new workflow, in the layout the engine writes (``packed_state``)."""
    return WorkflowBuilder(host, new_workflow_id(), packed=host._engine.packed_state)


def _one_task(task: TaskLike | None, task_name: str | None) -> TaskLike:
    if task is None and task_name is None:
        raise InvalidTaskError("sign() needs a task: sign(task) or sign(task_name='...')")
    if task is not None and task_name is not None and task != task_name:
        raise InvalidTaskError(f"sign() got two tasks: {task!r} and task_name={task_name!r}")
    return task if task is not None else task_name  # type: ignore[return-value]


class WorkflowConstructors:
    """Building workflows (a mixin of :class:`mageflow.Mageflow`, whose methods these are)."""

    async def sign(
        self: WorkflowHost,
        task: TaskLike | None = None,
        *,
        task_name: str | None = None,
        task_identifiers: dict[str, Any] | None = None,
        success_callbacks: Callbacks = None,
        error_callbacks: Callbacks = None,
        mageflow_options: Options | None = None,
        **kwargs: Any,
    ) -> Signature:
        """A stored signature of ``task`` (or ``task_name=``, the product documents'
        spelling) with ``kwargs`` merged into its message. ``mageflow_options`` sets its
        priority or delay over the task's registered defaults."""
        task = _one_task(task, task_name)
        if isinstance(task, Signature) and not (
            kwargs or success_callbacks or error_callbacks or task_identifiers or mageflow_options
        ):
            return task
        if isinstance(task, Signature):
            raise SignatureInUseError(
                f"{task.key} is already signed; to change its kwargs, callbacks, identifiers "
                "or options, sign its task again: mf.sign('<task name>', ...)"
            )
        name = self.task_name_of(task)
        b = _new_workflow(self)
        ok, err = await b.callbacks(
            ROOT, callbacks_of(success_callbacks), callbacks_of(error_callbacks)
        )
        b.node(
            ROOT,
            b.task_def(name, mageflow_options, on_success=ok, on_error=err),
            kwargs=kwargs,
            identifiers=task_identifiers,
        )
        await b.commit()
        return Signature(self, f"{b.wf}.{ROOT}")

    async def chain(
        self: WorkflowHost,
        tasks: Sequence[TaskLike],
        *,
        name: str | None = None,
        success: Callbacks = None,
        error: Callbacks = None,
        mageflow_options: Options | None = None,
        **kwargs: Any,
    ) -> ChainSignature:
        """Steps run in order; step k+1 receives step k's result; ``success`` gets the last
        result; a failing step fires its own error callbacks, then ``error``. ``kwargs``
        are the workflow's context: every step (however nested) receives them, below
        its own kwargs."""
        if name is not None:
            check_name(name, "the chain's name")
        b = _new_workflow(self)
        steps = [f"{ROOT}.{i}" for i in range(len(tasks))]
        await b.task_likes(zip(steps, tasks, strict=True), parent=ROOT)
        ok, err = await b.callbacks(ROOT, callbacks_of(success), callbacks_of(error))
        d = NodeDef(kind="chain", name=name, on_success=ok, on_error=err)
        b.node(ROOT, b.with_options(d, mageflow_options), kwargs=kwargs)
        b.lists[F.aux(F.STEPS, ROOT)] = steps
        await b.commit()
        return ChainSignature(self, f"{b.wf}.{ROOT}")

    async def swarm(
        self: WorkflowHost,
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
        """Items run in parallel (``config.max_concurrency`` at most, across workers).
        The swarm is open by default (the product documents' semantics): add items with
        :meth:`SwarmSignature.add_task`, then :meth:`SwarmSignature.close_swarm`; it
        completes once closed and every item finished. ``is_swarm_closed=True`` closes it
        at creation. ``kwargs`` are the workflow's context: every item (however nested)
        receives them, below its own kwargs."""
        b = _new_workflow(self)
        items = unique_item_ids(ROOT, len(tasks))
        await b.task_likes(zip(items, tasks, strict=True), parent=ROOT)
        await b.swarm_root(
            success_callbacks,
            error_callbacks,
            config,
            is_swarm_closed,
            task_name,
            items,
            mageflow_options,
            kwargs,
        )
        await b.commit()
        return SwarmSignature(self, f"{b.wf}.{ROOT}")

    async def swarm_of(
        self: WorkflowHost,
        task: TaskLike,
        items: Iterable[Mapping[str, Any]],
        *,
        success_callbacks: Callbacks = None,
        error_callbacks: Callbacks = None,
        config: SwarmConfig | None = None,
        is_swarm_closed: bool = False,
        task_name: str | None = None,
        mageflow_options: Options | None = None,
        **kwargs: Any,
    ) -> SwarmSignature:
        """A swarm of ``task`` (a ``@mf.task`` function or a task name) with one item per
        kwargs mapping in ``items``, in order: what :meth:`swarm` builds from
        ``[await mf.sign(task, **kw) for kw in items]``, written at once.

        The keywords (and the context ``kwargs``) are :meth:`swarm`'s; each item's kwargs
        win over the context. All-or-nothing: every item is validated before
        anything is written, and a failed write leaves nothing that can be loaded or run.
        Raises :class:`NotATaskError` for a signature, :class:`PayloadNotSerializableError`
        for an item that is not a JSON-serialisable mapping."""
        b = _new_workflow(self)
        bulk = b.task_items(ROOT, task, items)
        b.store_items(bulk)
        await b.swarm_root(
            success_callbacks,
            error_callbacks,
            config,
            is_swarm_closed,
            task_name,
            bulk.sids,
            mageflow_options,
            kwargs,
        )
        await b.commit()
        return SwarmSignature(self, f"{b.wf}.{ROOT}")

    async def graph(
        self: WorkflowHost,
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
        """A dependency graph: ``nodes`` maps a name to a task-like (no dependencies), a
        ``(task_like, [required names])`` pair or a :class:`~mageflow.GraphNode` (with
        ``requires=`` and ``optional=``). A node starts once its dependencies finished and
        receives their results keyed by name in its ``ReturnValue`` field (else
        ``mageflow_results``); nodes without dependencies get the graph's message. The
        result is the sink nodes' results keyed by name.

        A failed node skips what requires it. A failure counts against
        ``stop_after_n_failures`` (default 1: the first one fails the graph; ``None``:
        never) unless every dependent declared the node optional. At most
        ``max_concurrency`` nodes run at once; node priorities order the ready ones.
        ``kwargs`` are the workflow's context. Raises :class:`UnknownDependencyError`,
        :class:`GraphCycleError` or :class:`InvalidGraphError` before anything is
        written."""
        checked = graph_nodes(nodes)
        config = SwarmConfig(
            max_concurrency=max_concurrency, stop_after_n_failures=stop_after_n_failures
        )
        b = _new_workflow(self)
        await build_graph(
            b,
            ROOT,
            checked,
            name=name,
            config=config,
            success=success_callbacks,
            error=error_callbacks,
            options=mageflow_options,
            context=kwargs,
        )
        await b.commit()
        return GraphSignature(self, f"{b.wf}.{ROOT}")

    async def branch(
        self: WorkflowHost,
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
        """A conditional path: ``selector`` runs with the branch's message; its result
        (a string, or a number/boolean matched by its JSON text) picks the case of
        ``cases`` to run next, else ``default`` (no default: the branch fails with
        ``NoBranchMatched``). The chosen task-like gets the branch's message and the
        selector's result (``ReturnValue`` rule); the others end ``skipped``; the
        branch's result is the chosen one's. Raises :class:`InvalidGraphError` for no
        case and no default."""
        b = _new_workflow(self)
        await build_branch(
            b,
            ROOT,
            selector,
            cases,
            default,
            name=name,
            success=success_callbacks,
            error=error_callbacks,
            options=mageflow_options,
            context=kwargs,
        )
        await b.commit()
        return BranchSignature(self, f"{b.wf}.{ROOT}")
