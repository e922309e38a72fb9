"""Turning what a user passes (signatures, task functions, task names) into stored records.

Every workflow has a root ``r``; children get dotted ids (``r.0`` chain step,
``r.i3f2a1b9c0d1e2`` swarm item, ``r.s0`` / ``r.e0`` callbacks). A signature that was signed on
its own is *moved* into the workflow that uses it: its records are copied under the new
id and its old standalone workflow is deleted, so one workflow = one hash tag.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, Union

from mageflow.engine import ROOT, split_key
from mageflow.engine import fields as F
from mageflow.errors import (
    NotATaskError,
    PayloadNotSerializableError,
    SignatureInUseError,
    WorkflowTooDeepError,
)
from mageflow.flows import identifiers as idents
from mageflow.flows.messages import to_json
from mageflow.models.config import SwarmConfig
from mageflow.models.options import Options
from mageflow.models.signatures import Kind, NodeDef, check_name

if TYPE_CHECKING:
    from mageflow.flows.handles import Signature
    from mageflow.flows.runtime import Runtime

TaskLike: TypeAlias = Union["Signature", Callable[..., Any], str]
"""A :class:`Signature`, a function registered with ``@mf.task`` or a task name."""

Callbacks: TypeAlias = Sequence[TaskLike] | TaskLike | None
"""One task-like or several."""

MAX_DEPTH = 64
"""How deeply workflows may nest (each level is a few frames of the engine script)."""


def new_workflow_id() -> str:
    return secrets.token_hex(8)


def new_item_id(parent: str) -> str:
    """A swarm item id: 64 random bits (the engine refuses a duplicate on ``add``)."""
    return f"{parent}.i{secrets.token_hex(8)}"


def unique_item_ids(parent: str, n: int) -> list[str]:
    """``n`` distinct new item ids (like :func:`new_item_id`)."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        missing = n - len(ids)
        bits = secrets.token_hex(8 * missing)
        for i in range(0, 16 * missing, 16):
            ids[f"{parent}.i{bits[i : i + 16]}"] = None
    return list(ids)


def with_options(d: NodeDef, options: Options | None, *, native_delay: bool) -> NodeDef:
    """``d`` with ``options`` applied: priority, and a delay or start time (held by the
    task manager when ``native_delay`` and ``d`` is a task, else by the engine)."""
    if options is None:
        return d
    seconds = options.delay_seconds
    d.priority = options.priority
    d.delay_ms = None if seconds is None else round(seconds * 1000)
    d.start_at_ms = None if options.start_at is None else round(options.start_at.timestamp() * 1000)
    timed = d.delay_ms is not None or d.start_at_ms is not None
    d.native_delay = timed and native_delay and d.kind == "task"
    d.queue = options.queue if d.kind == "task" else None
    return d


def callbacks_of(value: Callbacks) -> list[TaskLike]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]  # type: ignore[list-item]  # a str is a Sequence too: not a list here


def _check_depth(sid: str) -> None:
    depth = sid.count(".")
    if depth > MAX_DEPTH:
        raise WorkflowTooDeepError(
            f"workflow nests {depth} levels deep; at most {MAX_DEPTH} are supported. "
            "Flatten it, or start the inner part from a task of its own."
        )


def _rename(sid: str, old_root: str, new_root: str) -> str:
    if sid == old_root:
        return new_root
    if sid.startswith(old_root + "."):
        return new_root + sid[len(old_root) :]
    return sid


_LISTS = {
    "swarm": (F.ITEMS, F.PRIO),
    "chain": (F.STEPS,),
    "graph": (F.NODES, F.SOURCES, F.SINKS),
}
"""The auxiliary lists of each composite kind that has some (moved with it)."""


def has_priority(dumped: str) -> bool:
    """Does stored definition ``dumped`` give its node a priority above 0?"""
    return '"pr":' in dumped and (json.loads(dumped).get("pr") or 0) > 0


def plain_tasks(fields: Mapping[str, str], sids: Iterable[str]) -> bool:
    """Are the nodes ``sids`` all tasks without callbacks (definitions in ``fields``)? A
    swarm of such items is marked ``flat``: they own no keys its root's final expiry must
    walk to (see H:holders in the script)."""
    known: dict[str, bool] = {}
    for sid in sids:
        dumped = F.stored_def(fields, sid)
        if dumped is None:
            return False
        plain = known.get(dumped)
        if plain is None:
            d = json.loads(dumped)
            plain = known[dumped] = d["k"] == "task" and not d.get("ok") and not d.get("err")
        if not plain:
            return False
    return True


def prioritized(fields: Mapping[str, str], sids: Iterable[str]) -> list[str]:
    """The sids among ``sids`` whose definition in ``fields`` has a priority above 0, in
    order: a swarm puts them on its queue when it queues all its items (the others wait
    past its cursor, written nothing per item; see LAZY QUEUE in the script)."""
    known: dict[str, bool] = {}
    out: list[str] = []
    for sid in sids:
        dumped = F.stored_def(fields, sid)
        if dumped is None:
            continue
        has = known.get(dumped)
        if has is None:
            has = known[dumped] = has_priority(dumped)
        if has:
            out.append(sid)
    return out


def priority_lists(
    fields: Mapping[str, str], lists: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The ``prio`` list of every swarm whose items list is in ``lists`` and has items with
    a priority (see :func:`prioritized`)."""
    out: dict[str, list[str]] = {}
    head = F.aux(F.ITEMS, "")
    for name, members in lists.items():
        if name.startswith(head) and (found := prioritized(fields, members)):
            out[F.aux(F.PRIO, name[len(head) :])] = found
    return out


def renamed_refs(d: NodeDef, rename: Callable[[str], str]) -> None:
    """Rename the graph and branch sids ``d`` refers to (a moved workflow)."""
    d.requires = [rename(x) for x in d.requires]
    d.optional = [rename(x) for x in d.optional]
    d.required_by = [rename(x) for x in d.required_by]
    d.optional_for = [rename(x) for x in d.optional_for]
    d.selector = d.selector and rename(d.selector)
    d.cases = {k: rename(x) for k, x in d.cases.items()}
    d.default = d.default and rename(d.default)


_PLAIN_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def kwargs_json(kwargs: Any, what: str) -> str | None:
    """A mapping of signature kwargs as JSON (``None`` when empty). Raises
    :class:`PayloadNotSerializableError` for anything else."""
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise PayloadNotSerializableError(
            f"{what} must be a mapping of keyword arguments, not {type(kwargs).__name__}"
        )
    if not kwargs:
        return None
    try:  # plain data (the common case) without the generic conversion
        return _PLAIN_JSON.encode(kwargs)
    except (TypeError, ValueError):
        return to_json(kwargs, what)


@dataclass(frozen=True)
class TaskItems:
    """New swarm items that all run one task, validated and serialised, not yet stored."""

    sids: list[str]
    kwargs: list[str | None]
    """Each item's kwargs JSON (``None``: none)."""
    shared: dict[str, str]
    """The records every item has, by field suffix (``""`` is the definition, dumped
    once for all of them; ``":status"`` ...)."""
    parent: str
    """The swarm they are items of."""

    def kwargs_records(self, start: int, stop: int) -> dict[str, str]:
        """The kwargs records of items ``start:stop``."""
        kw = zip(self.sids[start:stop], self.kwargs[start:stop], strict=True)
        return {f"{sid}:{F.KWARGS}": value for sid, value in kw if value is not None}


class WorkflowBuilder:
    """Collects the records of one new workflow (or of items added to a swarm)."""

    def __init__(self, mf: Runtime, wf: str, *, packed: bool = False) -> None:
        self.mf = mf
        self.wf = wf
        self.packed = packed
        """The workflow keeps run records (``F.RECORD``): a new one built with the engine's
        ``packed_state``, or an existing one that does. Items added through the engine's
        add op are written plain: the engine stores them in the workflow's layout."""
        self._status = F.RECORD if packed else F.STATUS
        self.fields: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.moved: list[tuple[Signature, str, list[str]]] = []
        self._moved_keys: set[str] = set()
        self._task_defs: dict[tuple[str, str | None, str | None], str] = {}
        self.now = str(int(time.time() * 1000))

    def node(
        self,
        sid: str,
        definition: NodeDef | str,
        *,
        kwargs: dict[str, Any] | None = None,
        identifiers: dict[str, Any] | None = None,
    ) -> None:
        """The records of node ``sid``: its definition (a model or its dump) and state."""
        _check_depth(sid)
        fields = self.fields
        fields[sid] = definition if isinstance(definition, str) else definition.dump()
        fields[F.of(sid, self._status)] = "pending"  # alone, a run record too
        fields[F.of(sid, F.CREATED)] = self.now
        if kwargs:
            fields[F.of(sid, F.KWARGS)] = to_json(kwargs, "signature kwargs")
        if identifiers:
            fields[F.of(sid, F.IDENTS)] = idents.stored(identifiers)

    def _task_def(self, name: str, parent: str | None, owner: str | None) -> str:
        """A task node's definition (the task's registered defaults), dumped once per
        shape and shared."""
        shape = (name, parent, owner)
        dumped = self._task_defs.get(shape)
        if dumped is None:
            dumped = self.task_def(name, parent=parent, owner=owner).dump()
            self._task_defs[shape] = dumped
        return dumped

    def task_items(
        self, parent: str, task: TaskLike, items: Iterable[Mapping[str, Any]]
    ) -> TaskItems:
        """One new item of swarm ``parent`` per kwargs mapping in ``items``, in order, all
        running ``task`` (a registered function or a task name). Every item is validated
        and serialised here, before anything is written; nothing is stored in
        :attr:`fields` (see :meth:`store_items`)."""
        from mageflow.flows.handles import Signature

        if isinstance(task, Signature):
            raise NotATaskError(
                f"{task.key} is a signature; swarm_of/add_tasks take one task (a @mf.task "
                "function or a task name) and a kwargs mapping per item. Pass signed "
                "signatures to swarm(...) or add_task(...) instead."
            )
        dumped = self._task_def(self.mf.task_name_of(task), parent, None)
        _check_depth(f"{parent}.i")
        encoded = [kwargs_json(kw, f"item {i} (its kwargs)") for i, kw in enumerate(items)]
        # no per-item `created`: the items were built with their swarm, whose own
        # `created` they report (read_state), one field less per item
        shared = {"": dumped, F.of("", self._status): "pending"}
        return TaskItems(unique_item_ids(parent, len(encoded)), encoded, shared, parent)

    def store_items(self, items: TaskItems) -> None:
        """Store the records of ``items`` in :attr:`fields`. In a packed workflow their
        shared definition is their swarm's item template (stored once), unless the swarm
        has another one."""
        fields = self.fields
        dumped = items.shared[""]
        template = F.of(items.parent, F.TEMPLATE)
        if self.packed and fields.setdefault(template, dumped) == dumped:
            shared = [(k, v) for k, v in items.shared.items() if k]
        else:
            shared = list(items.shared.items())
        for sid, kw in zip(items.sids, items.kwargs, strict=True):
            for suffix, value in shared:
                fields[sid + suffix] = value
            if kw is not None:
                fields[f"{sid}:{F.KWARGS}"] = kw

    async def task_like(
        self, sid: str, value: TaskLike, *, parent: str | None = None, owner: str | None = None
    ) -> None:
        """Store ``value`` under ``sid``: a new task node, or a moved signature."""
        await self.task_likes([(sid, value)], parent=parent, owner=owner)

    async def task_likes(
        self,
        entries: Iterable[tuple[str, TaskLike]],
        *,
        parent: str | None = None,
        owner: str | None = None,
    ) -> None:
        """:meth:`task_like` for many ``(sid, value)``; signatures are moved in one batch."""
        from mageflow.flows.handles import Signature

        signed: list[tuple[str, Signature]] = []
        for sid, value in entries:
            if isinstance(value, Signature):
                signed.append((sid, value))
            else:
                name = self.mf.task_name_of(value)
                self.node(sid, self._task_def(name, parent, owner))
        if signed:
            await self._move(signed, parent, owner)

    def task_def(
        self,
        name: str,
        options: Options | None = None,
        *,
        parent: str | None = None,
        owner: str | None = None,
        on_success: list[str] | None = None,
        on_error: list[str] | None = None,
    ) -> NodeDef:
        """A task node of registered task ``name``: its registered defaults, overridden
        by ``options``."""
        registered = self.mf.tasks.get(name)
        merged = (options or Options()).over(registered.options if registered else None)
        d = NodeDef(
            kind="task",
            task=name,
            parent=parent,
            owner=owner,
            on_success=on_success or [],
            on_error=on_error or [],
        )
        return self.with_options(d, merged)

    def with_options(self, d: NodeDef, options: Options | None) -> NodeDef:
        return with_options(d, options, native_delay=self.mf.backend.capabilities.delayed_start)

    async def callbacks(
        self, owner_sid: str, success: Iterable[TaskLike], error: Iterable[TaskLike]
    ) -> tuple[list[str], list[str]]:
        ok = [(f"{owner_sid}.s{i}", cb) for i, cb in enumerate(success)]
        err = [(f"{owner_sid}.e{i}", cb) for i, cb in enumerate(error)]
        await self.task_likes([*ok, *err], owner=owner_sid)
        return [sid for sid, _ in ok], [sid for sid, _ in err]

    async def composite(
        self,
        sid: str,
        kind: Kind,
        name: str | None,
        success: Callbacks,
        error: Callbacks,
        config: SwarmConfig | None = None,
    ) -> NodeDef:
        """The definition of composite ``sid`` with its callbacks stored (and, for a swarm
        or graph, its ``config``); the caller adds the rest and stores it."""
        ok, err = await self.callbacks(sid, callbacks_of(success), callbacks_of(error))
        config = config or SwarmConfig()
        return NodeDef(
            kind=kind,
            name=name,
            on_success=ok,
            on_error=err,
            max_concurrency=config.max_concurrency,
            stop_after_n_failures=config.stop_after_n_failures,
        )

    async def swarm_root(
        self,
        success: Callbacks,
        error: Callbacks,
        config: SwarmConfig | None,
        closed: bool,
        name: str | None,
        items: list[str],
        options: Options | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """The root swarm of this workflow over ``items`` (sids already stored), with its
        dispatch ``options`` and the ``context`` kwargs every node under it receives."""
        if name is not None:
            check_name(name, "the swarm's task_name")
        d = await self.composite(ROOT, "swarm", name, success, error, config or SwarmConfig())
        self.node(ROOT, self.with_options(d, options), kwargs=context)
        if closed:
            self.fields[F.of(ROOT, F.CLOSED)] = "1"
        if plain_tasks(self.fields, items):
            self.fields[F.of(ROOT, F.FLAT)] = "1"
        self.lists[F.aux(F.ITEMS, ROOT)] = items

    async def _move(
        self, signed: Sequence[tuple[str, Signature]], parent: str | None, owner: str | None
    ) -> None:
        """Copy standalone signatures under new sids: one batched read for all of them."""
        old_wfs: list[str] = []
        for _, sig in signed:
            old_wf, old_sid = split_key(sig.key)
            if old_sid != ROOT or sig.key in self._moved_keys:
                raise SignatureInUseError(
                    f"{sig.key} already belongs to a workflow; sign a new one to use it again"
                )
            self._moved_keys.add(sig.key)
            old_wfs.append(old_wf)
        stored = await self.mf.store.read_many(old_wfs)
        for (sid, sig), old_wf, records in zip(signed, old_wfs, stored, strict=True):
            if not records:
                raise SignatureInUseError(f"{sig.key} no longer exists (expired or already used)")
            sent, status = F.node_state(records, old_wf, ROOT, [F.SENT, F.STATUS])
            if sent or status != "pending":
                raise SignatureInUseError(f"{sig.key} was already run; sign a new one to use it")
            old_lists = await self._copy(old_wf, records, sid, parent, owner)
            self.moved.append((sig, sid, old_lists))

    async def _copy(
        self,
        old_wf: str,
        records: Mapping[str, str],
        sid: str,
        parent: str | None,
        owner: str | None,
    ) -> list[str]:
        """Copy one standalone workflow's records under ``sid``; returns its list names.
        Its swarms' item templates are renamed like definitions; in a workflow of the
        plain layout each templated item gets its definition written out."""
        old_lists: list[str] = []
        rename = functools.partial(_rename, old_root=ROOT, new_root=sid)
        templates = {
            field.partition(":")[0]: self._renamed(value, False, parent, owner, rename)
            for field, value in records.items()
            if field.partition(":")[2] == F.TEMPLATE
        }
        for field, value in records.items():
            if field == F.LAYOUT:
                continue
            old, sep, attr = field.partition(":")
            new_sid = rename(old)
            if attr == F.TEMPLATE:
                if self.packed:
                    self.fields[f"{new_sid}:{attr}"] = templates[old]
                continue
            if attr in (F.STATUS, F.RECORD):  # pending, never run (checked): in our layout
                attr, value = self._status, "pending"
                swarm = F.item_swarm(old)
                if not self.packed and old not in records and swarm in templates:
                    _check_depth(new_sid)
                    self.fields[new_sid] = templates[swarm]
            if not sep:
                _check_depth(new_sid)
                d = NodeDef.model_validate(json.loads(value))
                for kind in _LISTS.get(d.kind, ()):
                    old_lists.append(F.aux(kind, old))
                    members = await self.mf.store.read_list(old_wf, F.aux(kind, old))
                    self.lists[F.aux(kind, new_sid)] = [rename(x) for x in members]
                self.fields[new_sid] = self._renamed(value, old == ROOT, parent, owner, rename)
            else:
                self.fields[f"{new_sid}:{attr}"] = value
        return old_lists

    @staticmethod
    def _renamed(
        dumped: str,
        at_root: bool,
        parent: str | None,
        owner: str | None,
        rename: Callable[[str], str],
    ) -> str:
        """A definition (or a swarm's item template) of a moved workflow, its references
        renamed; ``at_root``: the root's, which takes the new ``parent`` and ``owner``."""
        d = NodeDef.model_validate(json.loads(dumped))
        d.parent = parent if at_root else d.parent and rename(d.parent)
        d.owner = owner if at_root else d.owner and rename(d.owner)
        d.on_success = [rename(x) for x in d.on_success]
        d.on_error = [rename(x) for x in d.on_error]
        renamed_refs(d, rename)
        return d.dump()

    async def commit(self) -> None:
        """Write the new records (indexed for ``mageflow ls`` and, under their final keys,
        by their identifiers), then drop the standalone workflows that were moved in.

        All-or-nothing for the caller: the root definition is written last (a write that
        fails part-way leaves a workflow without a root, which cannot be loaded or run),
        the index entry after it, and a failed write is deleted again; what a lost
        connection keeps from being deleted expires with the active TTL. The workflow id
        is new and its key reaches nobody before this returns."""
        if self.packed:
            self.fields[F.LAYOUT] = F.PACKED
        root = self.fields.pop(ROOT, None)
        if root is not None:
            self.fields[ROOT] = root
        self.lists.update(priority_lists(self.fields, self.lists))
        try:
            await self.mf.store.write(
                self.wf,
                self.fields,
                self.lists,
                index=True,
                identified=idents.to_index(self.wf, self.fields),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.mf.store.delete(self.wf, list(self.lists))
            raise
        await self.drop_moved()

    async def drop_moved(self) -> None:
        """Delete the standalone workflows that were moved in; repoint their handles."""
        if not self.moved:
            return
        old = [(split_key(sig.key)[0], lists) for sig, _, lists in self.moved]
        await self.mf.store.delete_many(old)
        for (old_wf, _), (_, sid, _) in zip(old, self.moved, strict=True):
            self.mf.rehome(old_wf, functools.partial(self._new_key, sid))

    def _new_key(self, new_root: str, old_sid: str) -> str:
        return f"{self.wf}.{_rename(old_sid, ROOT, new_root)}"
