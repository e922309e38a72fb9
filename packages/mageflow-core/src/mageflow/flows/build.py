"""Turning what a user passes (signatures, task functions, task names) into stored records.

Every workflow has a root ``r``; children get dotted ids (``r.0`` chain step,
``r.i3f2a1b9c0d1e2`` swarm item, ``r.s0`` / ``r.e0`` callbacks). A signature that was signed on
its own is *moved* into the workflow that uses it: its records are copied under the new
id and its old standalone workflow is deleted, so one workflow = one hash tag.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, Union

from mageflow.engine import ROOT, split_key
from mageflow.engine import fields as F
from mageflow.errors import SignatureInUseError, WorkflowTooDeepError
from mageflow.flows import identifiers as idents
from mageflow.flows.messages import to_json
from mageflow.models.options import Options
from mageflow.models.signatures import NodeDef

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
    """``n`` distinct new item ids."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids[new_item_id(parent)] = None
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


class WorkflowBuilder:
    """Collects the records of one new workflow (or of one item added to a swarm)."""

    def __init__(self, mf: Runtime, wf: str) -> None:
        self.mf = mf
        self.wf = wf
        self.fields: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.moved: list[tuple[Signature, str, list[str]]] = []
        self.now = str(int(time.time() * 1000))

    def node(
        self,
        sid: str,
        definition: NodeDef,
        *,
        kwargs: dict[str, Any] | None = None,
        identifiers: dict[str, Any] | None = None,
    ) -> None:
        _check_depth(sid)
        self.fields[sid] = definition.dump()
        self.fields[F.of(sid, F.STATUS)] = "pending"
        self.fields[F.of(sid, F.CREATED)] = self.now
        if kwargs:
            self.fields[F.of(sid, F.KWARGS)] = to_json(kwargs, "signature kwargs")
        if identifiers:
            self.fields[F.of(sid, F.IDENTS)] = idents.stored(identifiers)

    async def task_like(
        self, sid: str, value: TaskLike, *, parent: str | None = None, owner: str | None = None
    ) -> None:
        """Store ``value`` under ``sid``: a new task node, or a moved signature."""
        from mageflow.flows.handles import Signature

        if isinstance(value, Signature):
            await self._move(sid, value, parent, owner)
            return
        name = self.mf.task_name_of(value)
        self.node(sid, self.task_def(name, parent=parent, owner=owner))

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
        ok: list[str] = []
        err: list[str] = []
        for i, cb in enumerate(success):
            ok.append(f"{owner_sid}.s{i}")
            await self.task_like(ok[-1], cb, owner=owner_sid)
        for i, cb in enumerate(error):
            err.append(f"{owner_sid}.e{i}")
            await self.task_like(err[-1], cb, owner=owner_sid)
        return ok, err

    async def _move(self, sid: str, sig: Signature, parent: str | None, owner: str | None) -> None:
        old_wf, old_sid = split_key(sig.key)
        if old_sid != ROOT or any(s is sig for s, _, _ in self.moved):
            raise SignatureInUseError(
                f"{sig.key} already belongs to a workflow; sign a new one to use it again"
            )
        records = await self.mf.store.read_all(old_wf)
        if not records:
            raise SignatureInUseError(f"{sig.key} no longer exists (expired or already used)")
        if records.get(F.of(ROOT, F.SENT)) or records.get(F.of(ROOT, F.STATUS)) != "pending":
            raise SignatureInUseError(f"{sig.key} was already run; sign a new one to use it")
        old_lists: list[str] = []
        for field, value in records.items():
            old, sep, attr = field.partition(":")
            new_sid = _rename(old, ROOT, sid)
            if not sep:
                _check_depth(new_sid)
                d = NodeDef.model_validate(json.loads(value))
                if d.kind in ("swarm", "chain"):
                    kind = F.ITEMS if d.kind == "swarm" else F.STEPS
                    old_lists.append(F.aux(kind, old))
                    members = await self.mf.store.read_list(old_wf, F.aux(kind, old))
                    self.lists[F.aux(kind, new_sid)] = [_rename(x, ROOT, sid) for x in members]
                d.parent = parent if old == ROOT else d.parent and _rename(d.parent, ROOT, sid)
                d.owner = owner if old == ROOT else d.owner and _rename(d.owner, ROOT, sid)
                d.on_success = [_rename(x, ROOT, sid) for x in d.on_success]
                d.on_error = [_rename(x, ROOT, sid) for x in d.on_error]
                self.fields[new_sid] = d.dump()
            else:
                self.fields[f"{new_sid}:{attr}"] = value
        self.moved.append((sig, sid, old_lists))

    async def commit(self) -> None:
        """Write the new records (indexed for ``mageflow ls`` and, under their final keys,
        by their identifiers), then drop the standalone workflows that were moved in."""
        await self.mf.store.write(
            self.wf,
            self.fields,
            self.lists,
            index=True,
            identified=idents.to_index(self.wf, self.fields),
        )
        await self.drop_moved()

    async def drop_moved(self) -> None:
        """Delete the standalone workflows that were moved in; repoint their handles."""
        for sig, sid, lists in self.moved:
            old_wf, _ = split_key(sig.key)
            await self.mf.store.delete(old_wf, lists)
            self.mf.rehome(old_wf, functools.partial(self._new_key, sid))

    def _new_key(self, new_root: str, old_sid: str) -> str:
        return f"{self.wf}.{_rename(old_sid, ROOT, new_root)}"
