"""What users hold: :class:`Signature`, :class:`ChainSignature`, :class:`SwarmSignature`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mageflow import faults
from mageflow.engine import ROOT, split_key
from mageflow.engine import fields as F
from mageflow.errors import (
    MageflowError,
    SignatureNotFoundError,
    TaskFailedError,
    WaitTimeoutError,
)
from mageflow.flows import identifiers as idents
from mageflow.flows import observe
from mageflow.flows.build import (
    TaskLike,
    WorkflowBuilder,
    has_priority,
    new_item_id,
    priority_lists,
)
from mageflow.flows.messages import message_json
from mageflow.flows.publish import publish, start_backend
from mageflow.models.events import StreamedEvent
from mageflow.models.signatures import NodeDef, SignatureState
from mageflow.models.status import SignatureStatus

if TYPE_CHECKING:
    from mageflow.flows.runtime import Runtime

log = logging.getLogger("mageflow")

ADD_BATCH = 2_000
"""Items :meth:`SwarmSignature.add_tasks` adds per transition (a few fields each, so one
engine call stays under ~10k fields)."""


class Signature:
    """A task (or chain, or swarm) with its kwargs and callbacks, stored under :attr:`key`.

    A signature runs once; sign a new one to run the same task again.
    """

    kind = "task"

    def __init__(self, mf: Runtime, key: str) -> None:
        self.mf = mf
        self.key = key
        mf.track(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"

    @property
    def _wf_sid(self) -> tuple[str, str]:
        return split_key(self.key)

    async def aio_run_no_wait(self, message: Any = None) -> None:
        """Publish with ``message`` (a mapping or pydantic model) and return at once."""
        await self._run(message, watch=False)

    async def aio_run(self, message: Any = None, *, timeout: float | None = None) -> Any:
        """Publish and wait for the result. Raises :class:`TaskFailedError` on failure and
        :class:`WaitTimeoutError` after ``timeout`` seconds."""
        await self._run(message, watch=True)
        return await self.wait(timeout)

    async def _run(self, message: Any, watch: bool) -> None:
        raw = message_json(message)
        await start_backend(self.mf)  # before the transition: what it records is sent
        transition = await self.mf.engine.run(self.key, raw, watch=watch)
        observe.store_events(transition.events)
        faults.check(faults.AFTER_RUN, faults.CLIENT)
        await publish(self.mf, transition.publishes)

    async def wait(self, timeout: float | None = None) -> Any:
        """Wait (pushed, not polled) until finished; return the result or raise."""
        wf, sid = self._wf_sid
        try:
            status = await self.mf.engine.wait(self.key, timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # two classes before 3.11
            raise WaitTimeoutError(f"{self.key} did not finish within {timeout} s") from exc
        result, error = await self.mf.store.read(wf, [F.of(sid, F.RESULT), F.of(sid, F.ERROR)])
        if status == "done":
            return None if result is None else json.loads(result)
        if status == "canceled":
            raise TaskFailedError(self.key, {"type": "Canceled", "message": "canceled"})
        raise TaskFailedError(self.key, json.loads(error) if error else None)

    async def get_status(self) -> SignatureStatus:
        wf, sid = self._wf_sid
        (status,) = await F.read_node(self.mf.store, wf, sid, [F.STATUS])
        if status is None:
            raise SignatureNotFoundError(f"no signature stored under {self.key!r}")
        return SignatureStatus(status)

    async def get_state(self) -> SignatureState:
        """A snapshot: status, attempts, timings, result or error, children, counts."""
        from mageflow.flows.inspect import read_state

        return await read_state(self.mf, self.key)

    def events(self, *, after: str = "0") -> AsyncIterator[StreamedEvent]:
        """Every state change of this node and everything under it, in order, as the
        engine's transitions make them (pushed, not polled): ``async for event in
        wf.events()``. Replays from the start (or stream id ``after``) so nothing is
        missed; ends after this node's terminal event (or its workflow's)."""
        from mageflow.flows.stream import node_events

        return node_events(self.mf, self.key, after=after)

    async def suspend(self) -> None:
        """Stop what has not started; running tasks finish, what follows them waits."""
        await self.mf.engine.suspend(self.key, interrupt=False, can_cancel=False)
        self._lifecycle("mageflow_workflow_suspended", "suspended")

    def _lifecycle(self, hook: str, status: str) -> None:
        observe.emit(hook, self.key, kind=self.kind, status=status)

    async def interrupt(self) -> None:
        """Suspend and also cancel running tasks where the backend can; those run again
        on :meth:`resume`. Without that capability this is :meth:`suspend`."""
        can_cancel = self.mf.backend.capabilities.cancel_running
        run_ids = await self.mf.engine.suspend(self.key, interrupt=True, can_cancel=can_cancel)
        if run_ids:
            await self.mf.backend.cancel(run_ids)
        self._lifecycle("mageflow_workflow_suspended", "interrupted")

    async def resume(self) -> None:
        """Release exactly what was held, once; on a workflow that is not held, re-send
        what was dispatched and never started. Nothing runs twice. Raises
        :class:`WorkflowFinishedError` on a finished workflow."""
        transition = await self.mf.engine.resume(self.key)
        self._lifecycle("mageflow_workflow_resumed", "active")
        observe.store_events(transition.events)
        await publish(self.mf, transition.publishes)

    async def retry(self) -> None:
        """Re-run a failed workflow from where it failed: failed tasks run again, a chain
        resumes at its failed step, a swarm re-runs its failed items and the ones its
        failure budget stopped; every done result stays and nothing done runs again. Then
        it continues as if it had not failed (:meth:`wait` for the outcome). Error
        callbacks are re-armed: a second failure fires them again. Call it on the root.

        Raises :class:`WorkflowNotFailedError` unless the workflow failed, and
        :class:`WorkflowBusyError` while an error callback of the failure is still
        dispatched or running. Items a stopped swarm let run keep running and count."""
        transition = await self.mf.engine.retry(self.key)
        self._lifecycle("mageflow_workflow_retried", "active")
        observe.store_events(transition.events)
        await publish(self.mf, transition.publishes)

    async def cancel(self) -> None:
        """Stop this node and everything under it for good: nothing more starts under it
        and its own callbacks never fire. On a root that ends the workflow; on a step or
        item its parent counts it as failed with error type ``Canceled`` (a chain stops, a
        swarm counts it against ``stop_after_n_failures``). Running tasks are canceled
        where the backend can. Raises :class:`WorkflowFinishedError` once it finished."""
        run_ids, transition = await self.mf.engine.cancel(self.key)
        if run_ids and self.mf.backend.capabilities.cancel_running:
            await self.mf.backend.cancel(run_ids)
        observe.store_events(transition.events)
        await publish(self.mf, transition.publishes)


class ChainSignature(Signature):
    """Steps run one after the other; step k+1 receives step k's result."""

    kind = "chain"


class SwarmSignature(Signature):
    """Items run in parallel under a concurrency cap; callbacks fire once when closed and
    every item has finished, with the item results in item order."""

    kind = "swarm"

    async def add_task(
        self, task: TaskLike, *, task_identifiers: dict[str, Any] | None = None, **kwargs: Any
    ) -> Signature:
        """Add an item; run it with ``await item.aio_run_no_wait(message)`` (its message is
        merged over the swarm's), or let :meth:`close_swarm` / the swarm's run queue it.
        ``kwargs`` and ``task_identifiers`` work as in ``sign``. Raises
        :class:`SwarmClosedError` when closed."""
        wf, sid = self._wf_sid
        builder = WorkflowBuilder(self.mf, wf)
        item_sid = new_item_id(sid)
        signed: Signature | None = None
        if kwargs or task_identifiers:
            task = signed = await self.mf.sign(task, task_identifiers=task_identifiers, **kwargs)
        await builder.task_like(item_sid, task, parent=sid)
        # indexed first: an entry whose add is refused is dropped by the next lookup
        await self.mf.store.index_identified(idents.to_index(wf, builder.fields))
        lists = {**builder.lists, **priority_lists(builder.fields, builder.lists)}
        lists.update(priority_lists(builder.fields, {F.aux(F.ITEMS, sid): [item_sid]}))
        try:
            await self.mf.engine.add_items(self.key, [item_sid], builder.fields, lists=lists)
        except MageflowError:
            if signed is not None:  # refused: leave no signature of ours behind either
                await self.mf.store.delete(split_key(signed.key)[0])
            raise
        await builder.drop_moved()
        d = NodeDef.model_validate(json.loads(builder.fields[item_sid]))
        return handle_for(self.mf, f"{wf}.{item_sid}", d.kind)

    async def add_tasks(
        self, task: TaskLike, items: Iterable[Mapping[str, Any]]
    ) -> list[Signature]:
        """Add one item of ``task`` (a ``@mf.task`` function or a task name) per kwargs
        mapping in ``items``, in order, as :meth:`add_task` would one by one; returns their
        handles. Every item is validated before anything is written.

        Up to :data:`ADD_BATCH` items are added in one atomic transition (refused, it adds
        none of them); a bigger batch is added in several, in order, and a refusal after
        the first (the swarm was closed meanwhile) says how many were added. Raises
        :class:`SwarmClosedError` when closed, :class:`NotATaskError` for a signature."""
        wf, sid = self._wf_sid
        bulk = WorkflowBuilder(self.mf, wf).task_items(sid, task, items)
        sids = bulk.sids
        ranked = has_priority(bulk.shared[""])  # one definition shared by all
        for start in range(0, len(sids), ADD_BATCH):
            stop = start + ADD_BATCH
            records = bulk.kwargs_records(start, stop)
            lists = {F.aux(F.PRIO, sid): sids[start:stop]} if ranked else None
            try:
                await self.mf.engine.add_items(
                    self.key, sids[start:stop], records, bulk.shared, lists
                )
            except MageflowError as exc:
                if start == 0:
                    raise
                raise type(exc)(
                    f"{exc} (the first {start} of the {len(sids)} items were added, in "
                    "earlier transitions; the rest were not)"
                ) from exc
        return [Signature(self.mf, f"{wf}.{s}") for s in sids]

    async def close_swarm(self) -> None:
        """No more items; the swarm completes once every item has finished."""
        transition = await self.mf.engine.close_swarm(self.key)
        observe.store_events(transition.events)
        faults.check(faults.AFTER_CLOSE, faults.CLIENT)
        await publish(self.mf, transition.publishes)

    async def wait(self, timeout: float | None = None) -> Any:
        if not await self.is_swarm_closed():
            log.warning(
                "waiting for swarm %s, which is open: it completes only once close_swarm() "
                "is called and every item finished",
                self.key,
            )
        return await super().wait(timeout)

    async def is_swarm_closed(self) -> bool:
        wf, sid = self._wf_sid
        (closed,) = await self.mf.store.read(wf, [F.of(sid, F.CLOSED)])
        return closed == "1"


class GraphSignature(Signature):
    """Nodes run once their dependencies finished, each with their results keyed by
    dependency name; the result is the sink nodes' results keyed by node name."""

    kind = "graph"

    async def nodes(self) -> dict[str, Signature]:
        """Handles of the graph's nodes by name, in the order they were given."""
        wf, sid = self._wf_sid
        sids = await self.mf.store.read_list(wf, F.aux(F.NODES, sid))
        return await _named_handles(self.mf, wf, sids, lambda d: d.graph_name)


class BranchSignature(Signature):
    """A selector runs; its result picks the case that runs next (the others end
    ``skipped``); the result is that case's result."""

    kind = "branch"

    async def cases(self) -> dict[str | None, Signature]:
        """Handles of the branch's cases by key (``None``: the default)."""
        wf, sid = self._wf_sid
        (raw,) = await F.read_defs(self.mf.store, wf, [sid])
        if raw is None:
            raise SignatureNotFoundError(f"no signature stored under {self.key!r}")
        d = NodeDef.model_validate(json.loads(raw))
        named: dict[str | None, str] = {k: v for k, v in d.cases.items()}
        if d.default is not None:
            named[None] = d.default
        found = await _named_handles(self.mf, wf, list(named.values()), lambda _: None)
        return dict(zip(named, found.values(), strict=True))


async def _named_handles(
    mf: Runtime, wf: str, sids: list[str], name_of: Callable[[NodeDef], str | None]
) -> dict[Any, Signature]:
    """Handles of nodes ``sids`` of ``wf`` (one read), keyed by ``name_of`` their
    definition (``None``: by sid)."""
    raw = await F.read_defs(mf.store, wf, sids)
    out: dict[Any, Signature] = {}
    for sid, text in zip(sids, raw, strict=True):
        if text is None:
            raise SignatureNotFoundError(f"node {wf}.{sid} is gone (expired)")
        d = NodeDef.model_validate(json.loads(text))
        out[name_of(d) or sid] = handle_for(mf, f"{wf}.{sid}", d.kind)
    return out


_HANDLES: dict[str, type[Signature]] = {
    "chain": ChainSignature,
    "swarm": SwarmSignature,
    "graph": GraphSignature,
    "branch": BranchSignature,
}


def handle_for(mf: Runtime, key: str, kind: str) -> Signature:
    return _HANDLES.get(kind, Signature)(mf, key)


__all__ = [
    "ROOT",
    "BranchSignature",
    "ChainSignature",
    "GraphSignature",
    "Signature",
    "SwarmSignature",
    "handle_for",
]
