"""Building dependency graphs and branches. The engine runs them (``transitions.lua``):
this module only checks what the user passed and writes the records.

A graph's nodes get the sids ``<graph>.n0``, ``.n1`` ... in the order given; a branch's
selector is ``<branch>.x``, its cases ``.c0``, ``.c1`` ... and its default ``.cd``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from mageflow.engine import fields as F
from mageflow.errors import GraphCycleError, InvalidGraphError, UnknownDependencyError
from mageflow.flows.build import Callbacks, TaskLike, WorkflowBuilder
from mageflow.models.config import SwarmConfig
from mageflow.models.options import Options
from mageflow.models.signatures import NodeDef, check_name


@dataclass(frozen=True)
class GraphNode:
    """A node of :meth:`Mageflow.graph`: ``task`` (any task-like: a signature, chain,
    swarm, graph, branch, ``@mf.task`` function or task name) starts once every node
    named in ``requires`` and ``optional`` has finished. A ``requires`` node that fails
    (or is skipped) skips this one; an ``optional`` one that fails lets it run with
    ``{"mageflow_error": ...}`` in that dependency's place."""

    task: TaskLike
    requires: Sequence[str] = ()
    optional: Sequence[str] = ()


NodeSpec: TypeAlias = GraphNode | tuple[TaskLike, Sequence[str]] | TaskLike
"""A graph node: a :class:`GraphNode`, ``(task_like, [required names])`` or a task-like
without dependencies."""


def _names(value: object, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidGraphError(f"{what} must be a list of node names, not {value!r}")
    return [check_name(x, f"a node name in {what}") for x in value]


def graph_nodes(nodes: Mapping[str, NodeSpec]) -> dict[str, GraphNode]:
    """``nodes`` as :class:`GraphNode` s, checked: names are text, every dependency is a
    node, no edge is both required and optional, no cycle. Raises
    :class:`InvalidGraphError` (:class:`UnknownDependencyError`, :class:`GraphCycleError`)."""
    if not isinstance(nodes, Mapping):
        raise InvalidGraphError(
            f"a graph takes a mapping of node name to node, not {type(nodes).__name__}"
        )
    out: dict[str, GraphNode] = {}
    for name, spec in nodes.items():
        check_name(name, "a graph node's name")
        if isinstance(spec, GraphNode):
            node = spec
        elif isinstance(spec, tuple):
            if len(spec) != 2:
                raise InvalidGraphError(
                    f"node {name!r}: a tuple node is (task, [required names]), got {spec!r}"
                )
            node = GraphNode(spec[0], spec[1])
        else:
            node = GraphNode(spec)
        requires = _names(node.requires, f"node {name!r}'s requires")
        optional = _names(node.optional, f"node {name!r}'s optional")
        both = set(requires) & set(optional)
        if both:
            raise InvalidGraphError(
                f"node {name!r} lists {sorted(both)} as both required and optional; pick one"
            )
        out[name] = GraphNode(node.task, tuple(dict.fromkeys(requires)), tuple(optional))
    for name, node in out.items():
        for dep in (*node.requires, *node.optional):
            if dep not in out:
                raise UnknownDependencyError(
                    f"node {name!r} depends on {dep!r}, which is not a node of the graph "
                    f"(nodes: {sorted(out)}); add it or fix the name"
                )
    _refuse_cycles(out)
    return out


def _refuse_cycles(nodes: Mapping[str, GraphNode]) -> None:
    """Kahn's algorithm: whatever never becomes ready lies on or behind a cycle."""
    waiting = {name: len(n.requires) + len(n.optional) for name, n in nodes.items()}
    dependents: dict[str, list[str]] = {name: [] for name in nodes}
    for name, n in nodes.items():
        for dep in (*n.requires, *n.optional):
            dependents[dep].append(name)
    ready = [name for name, w in waiting.items() if w == 0]
    while ready:
        for x in dependents[ready.pop()]:
            waiting[x] -= 1
            if waiting[x] == 0:
                ready.append(x)
    stuck = sorted(name for name, w in waiting.items() if w > 0)
    if stuck:
        raise GraphCycleError(
            f"the dependencies of nodes {stuck} form a cycle; a graph must be acyclic "
            "(remove an edge, or run the repeated part as a new workflow)"
        )


def _patch(b: WorkflowBuilder, sid: str, change: Callable[[NodeDef], None]) -> None:
    d = NodeDef.model_validate(json.loads(b.fields[sid]))
    change(d)
    b.fields[sid] = d.dump()


async def build_graph(
    b: WorkflowBuilder,
    sid: str,
    nodes: Mapping[str, GraphNode],
    *,
    name: str | None,
    config: SwarmConfig,
    success: Callbacks,
    error: Callbacks,
    options: Options | None,
    context: dict[str, Any] | None,
) -> None:
    """The records of graph ``sid`` over checked ``nodes`` (see :func:`graph_nodes`)."""
    if name is not None:
        check_name(name, "the graph's name")
    sids = {node: f"{sid}.n{i}" for i, node in enumerate(nodes)}
    await b.task_likes([(sids[n], spec.task) for n, spec in nodes.items()], parent=sid)
    required_by: dict[str, list[str]] = {n: [] for n in nodes}
    optional_for: dict[str, list[str]] = {n: [] for n in nodes}
    for n, spec in nodes.items():
        for dep in spec.requires:
            required_by[dep].append(sids[n])
        for dep in spec.optional:
            optional_for[dep].append(sids[n])
    for n, spec in nodes.items():

        def graph_fields(d: NodeDef, n: str = n, spec: GraphNode = spec) -> None:
            d.graph_name = n
            d.requires = [sids[x] for x in spec.requires]
            d.optional = [sids[x] for x in spec.optional]
            d.required_by = required_by[n]
            d.optional_for = optional_for[n]

        _patch(b, sids[n], graph_fields)
        if spec.requires or spec.optional:
            b.fields[F.of(sids[n], F.N_DEPS)] = str(len(spec.requires) + len(spec.optional))
    d = await b.composite(sid, "graph", name, success, error, config)
    b.node(sid, b.with_options(d, options), kwargs=context)
    b.lists[F.aux(F.NODES, sid)] = list(sids.values())
    # lists, not definition fields: every node event decodes the graph's definition
    sources = [sids[n] for n, s in nodes.items() if not (s.requires or s.optional)]
    sinks = [sids[n] for n in nodes if not (required_by[n] or optional_for[n])]
    if sources:
        b.lists[F.aux(F.SOURCES, sid)] = sources
    if sinks:
        b.lists[F.aux(F.SINKS, sid)] = sinks


async def build_branch(
    b: WorkflowBuilder,
    sid: str,
    selector: TaskLike,
    cases: Mapping[str, TaskLike],
    default: TaskLike | None,
    *,
    name: str | None,
    success: Callbacks,
    error: Callbacks,
    options: Options | None,
    context: dict[str, Any] | None,
) -> None:
    """The records of branch ``sid``: ``selector`` picks one of ``cases`` (or ``default``)."""
    if not isinstance(cases, Mapping):
        raise InvalidGraphError(
            f"a branch's cases are a mapping of selector result to task-like, not "
            f"{type(cases).__name__}"
        )
    if not cases and default is None:
        raise InvalidGraphError("a branch needs at least one case or a default")
    for key in cases:
        check_name(key, "a branch case's key")
    if name is not None:
        check_name(name, "the branch's name")
    case_sids = {key: f"{sid}.c{i}" for i, key in enumerate(cases)}
    entries: list[tuple[str, TaskLike]] = [(f"{sid}.x", selector)]
    entries += [(case_sids[k], task) for k, task in cases.items()]
    if default is not None:
        entries.append((f"{sid}.cd", default))
    await b.task_likes(entries, parent=sid)
    d = await b.composite(sid, "branch", name, success, error)
    d.selector = f"{sid}.x"
    d.cases = case_sids
    d.default = None if default is None else f"{sid}.cd"
    b.node(sid, b.with_options(d, options), kwargs=context)
