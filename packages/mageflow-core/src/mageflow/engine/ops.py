"""The engine's operations: one call of ``transitions.lua`` each, run by the store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from mageflow.engine import fields as F
from mageflow.engine.coalesce import Coalescer
from mageflow.engine.keys import ROOT, split_key
from mageflow.engine.replies import (
    Reconciled,
    StartOutcome,
    Transition,
    decode_publishes,
    decode_transition,
)
from mageflow.errors import (
    EngineError,
    SignatureInUseError,
    SignatureNotFoundError,
    StoreUnavailableError,
    SwarmClosedError,
    WorkflowBusyError,
    WorkflowFinishedError,
    WorkflowNotFailedError,
)
from mageflow.store.base import Script, StateStore

SCRIPT = Script(resources.files("mageflow.engine").joinpath("transitions.lua").read_text())
"""The one state machine."""

DEFAULT_RESEND_AFTER = 30.0


def _raise_for(key: str, reply: Sequence[str]) -> None:
    code = reply[1]
    if code == "missing":
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    if code == "closed":
        raise SwarmClosedError(f"swarm {key} is closed; create a new swarm to run more tasks")
    if code in ("finished", "swarm_finished"):
        status = reply[2] if len(reply) > 2 else "finished"
        raise WorkflowFinishedError(
            f"{key} already finished ({status}); a finished workflow cannot be changed"
        )
    if code == "already_run":
        raise SignatureInUseError(f"{key} was already run; sign a new one to run it again")
    if code == "callback":
        raise SignatureInUseError(f"{key} is a callback; it runs when its task finishes")
    if code == "chain_step":
        raise SignatureInUseError(f"{key} is a chain step; run the chain instead")
    if code == "inner_node":
        raise SignatureInUseError(f"{key} is a node of a graph or branch; run that instead")
    if code == "not_root":
        raise SignatureInUseError(f"{key} is part of a larger workflow; cancel the workflow")
    if code == "exists":
        raise SignatureInUseError(f"{key} already has an item with that id; add it again")
    raise EngineError(f"unexpected engine reply for {key}: {list(reply)!r}")


class Engine:
    """Runs transitions on ``store``. ``resend_after`` (s): how long a dispatched task may
    stay unstarted before the reconciler re-sends it (doubling per re-send)."""

    def __init__(
        self,
        store: StateStore,
        *,
        resend_after: float = DEFAULT_RESEND_AFTER,
        delivery: str = "",
        packed_state: bool = True,
        script: Script = SCRIPT,
        finish_linger: float = 0.0,
    ) -> None:
        self.store = store
        self.script = script
        """The engine script its calls run (a variant of :data:`SCRIPT` in tests only)."""
        self.resend_after = resend_after
        self.packed_state = packed_state
        """New workflows keep each node's run state in one record (see RUN RECORD in the
        script). Off (``MAGEFLOW_PACKED_STATE=0``) while workers of an engine older than
        the run record still serve the store: they cannot read it."""
        self.delivery = delivery
        """The stream delivery the script appends dispatched tasks' messages with (JSON,
        see ``STREAM DELIVERY`` in the script; ``""``: the client publishes them)."""
        self.on_wake: Callable[[int], None] | None = None
        """Told the time a transition delayed a node to (the process's sweep loop)."""
        self._finishes: Coalescer[tuple[str, ...], list[str]] = Coalescer(
            self._send_finishes, shared=(StoreUnavailableError,), linger=finish_linger
        )
        """Finishes of one workflow made while one is in flight go out in one call, which
        waits up to ``finish_linger`` (s) for more to join it."""
        self.finish_linger = finish_linger

    def _argv(self, op: str, args: Sequence[str]) -> list[str]:
        return [
            op,
            str(int(time.time() * 1000)),
            str(self.store.active_ttl),
            str(self.store.finished_ttl),
            str(int(self.resend_after * 1000)),
            self.delivery,
            *args,
        ]

    async def _call(self, wf: str, op: str, *args: str) -> list[str]:
        keys = [self.store.hash_key(wf)]
        stats = self.store.stats_key
        if stats is not None:
            keys.append(stats)
        reply = await self.store.run_script(self.script, keys, self._argv(op, args))
        if not isinstance(reply, list) or not reply:
            raise EngineError(f"unexpected engine reply for {wf} ({op}): {reply!r}")
        return reply

    # -- a worker's events ------------------------------------------------------------------
    async def start(
        self,
        key: str,
        run_id: str,
        task_name: str | None = None,
        lease: float | None = None,
        *,
        began_ms: int | None = None,
    ) -> StartOutcome:
        """A delivery of ``key`` under ``run_id``, for task ``task_name``, arrived: may its
        user code run? A delivery naming another task than the node's is a ``mismatch``
        and changes nothing (workers always pass the name; ``None`` skips the check).
        With ``lease`` (s, needs ``task_name``) the attempt that runs holds the task that
        long (:meth:`renew` extends it); a copy of the same run arriving meanwhile is
        ``leased`` (``lease_until_ms``) and must not run user code. ``began_ms`` (needs
        ``task_name`` and ``lease``): a first delivery whose user code runs already takes
        its start, as of then (ms, this clock)."""
        wf, sid = split_key(key)
        named: tuple[str, ...] = () if task_name is None else (task_name,)
        if lease is not None and task_name is not None:
            named = (task_name, str(max(int(lease * 1000), 1)))
            if began_ms is not None:
                named = (*named, str(began_ms))
        reply = await self._call(wf, "start", sid, run_id, *named)
        action = reply[0]
        if action == "mismatch":
            return StartOutcome("mismatch", node_task=reply[1])
        if action == "leased":
            return StartOutcome("leased", lease_until_ms=int(reply[1]))
        if action == "run":
            return StartOutcome(
                "run",
                kwargs=json.loads(reply[1]),
                attempt=int(reply[2]),
                identifiers=json.loads(reply[3]),
            )
        if action == "redo":
            return StartOutcome("redo", owed=decode_publishes(wf, reply[1]))
        if action not in ("dup", "held", "dropped", "missing"):
            raise EngineError(f"unexpected engine reply for {key}: {reply!r}")
        return StartOutcome(action)  # type: ignore[arg-type]

    async def renew(self, key: str, run_id: str, lease: float) -> bool:
        """Extend the lease of run ``run_id`` on task ``key`` to ``lease`` s from now
        (``0`` releases it: the next attempt of the run may start at once). ``False``: the
        task is no longer this run's (settled, canceled, or taken over)."""
        wf, sid = split_key(key)
        reply = await self._call(wf, "lease", sid, run_id, str(max(int(lease * 1000), 0)))
        return reply[0] == "ok"

    async def finish(
        self,
        key: str,
        ok: bool,
        value: str,
        original_input: str = "{}",
        *,
        first_run: str | None = None,
        began_ms: int | None = None,
        ack: tuple[str, str, str] | None = None,
    ) -> Transition:
        """Record success (``value`` = result JSON) or final failure (``value`` = error JSON
        ``{"type","message"}``, ``original_input`` = the message the task received).
        ``first_run``: the run id of a first delivery whose user code ran without a
        :meth:`start`; its start is taken in the same call, and a delivery the start
        would have refused (a copy, a canceled workflow) is a ``duplicate``; ``began_ms``:
        when its user code began (ms, this clock; ``None``: now), the start's time.
        ``ack``: ``(stream, group, entry id)`` of the delivery, a stream entry on the
        store's Redis server: the same call acknowledges and deletes it, whatever it
        replies (a Redis store only: the in-process one has no streams to read).
        Finishes of one workflow made while one of its finishes is in flight go out
        together, in one call (each its own transition, as if alone)."""
        wf, sid = split_key(key)
        stream, group, entry = ack or ("", "", "")
        args = (
            sid,
            "1" if ok else "0",
            value,
            original_input,
            first_run or "",
            "" if began_ms is None else str(began_ms),
            stream,
            group,
            entry,
        )
        reply = await self._finishes(wf, args)
        if reply[0] == "missing":
            return Transition(duplicate=True)
        if reply[0] == "dup":
            return Transition(decode_publishes(wf, reply[1]), duplicate=True)
        return await self._woken(wf, decode_transition(wf, reply))

    async def _send_finishes(self, wf: str, finishes: Sequence[tuple[str, ...]]) -> list[list[str]]:
        """One ``finish`` call for several finishes of ``wf``: one reply each."""
        replies: list[Any] = await self._call(wf, "finish", *(a for f in finishes for a in f))
        if len(replies) != len(finishes) or not all(isinstance(r, list) and r for r in replies):
            raise EngineError(f"unexpected engine reply for {wf} (finish): {replies!r}")
        return replies

    async def continue_with(self, key: str, root_sid: str, original_input: str) -> Transition:
        """Task ``key`` returned a workflow, already stored under ``root_sid`` in its own
        workflow: start it in the task's place (``original_input``: the task's input, for
        the error callbacks if that workflow fails). A duplicate re-issues what the first
        call dispatched and starts nothing."""
        wf, sid = split_key(key)
        reply = await self._call(wf, "continue", sid, root_sid, original_input)
        if reply[0] == "missing":
            raise SignatureNotFoundError(f"no task stored under {key!r} to continue")
        if reply[0] == "dup":
            return Transition(decode_publishes(wf, reply[1]))
        return await self._woken(wf, decode_transition(wf, reply))

    # -- a client's commands ----------------------------------------------------------------
    async def run(self, key: str, own_message: str | None, watch: bool = False) -> Transition:
        wf, sid = split_key(key)
        await self._watch(wf)
        reply = await self._call(wf, "run", sid, own_message or "", "1" if watch else "0")
        if reply[0] == "err":
            _raise_for(key, reply)
        return await self._woken(wf, decode_transition(wf, reply))

    async def add_items(
        self,
        swarm_key: str,
        item_sids: Sequence[str],
        records: Mapping[str, str],
        shared: Mapping[str, str] | None = None,
        lists: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Add items, in order, with their records to an open swarm, in one atomic
        transition: refused, it writes nothing. ``shared`` maps a field suffix to a value
        every item gets (``{"": definition}`` stores ``<item sid> = definition``);
        ``lists`` are the auxiliary lists of a moved chain or swarm."""
        wf, sid = split_key(swarm_key)
        common = [v for pair in (shared or {}).items() for v in pair]
        flat = [v for pair in records.items() for v in pair]
        aux = [v for name, ids in (lists or {}).items() for v in (name, json.dumps(list(ids)))]
        reply = await self._call(
            wf,
            "add",
            sid,
            str(len(item_sids)),
            *item_sids,
            str(len(common) // 2),
            *common,
            str(len(records)),
            *flat,
            *aux,
        )
        if reply[0] == "err":
            _raise_for(swarm_key, reply)

    async def close_swarm(self, key: str) -> Transition:
        wf, sid = split_key(key)
        await self._watch(wf)
        reply = await self._call(wf, "close", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        return await self._woken(wf, decode_transition(wf, reply))

    async def suspend(self, key: str, interrupt: bool, can_cancel: bool) -> list[str]:
        """Hold ``key``; returns the run ids to cancel (interrupt, backend can cancel)."""
        wf, sid = split_key(key)
        mode = "interrupted" if interrupt else "suspended"
        reply = await self._call(wf, "suspend", sid, mode, "1" if can_cancel else "0")
        if reply[0] == "err":
            _raise_for(key, reply)
        return [r for r in json.loads(reply[1]) if r]

    async def resume(self, key: str) -> Transition:
        wf, sid = split_key(key)
        await self._watch(wf)
        reply = await self._call(wf, "resume", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        return await self._woken(wf, decode_transition(wf, reply))

    async def retry(self, key: str) -> Transition:
        """Re-run failed root ``key`` from its failure points, keeping every done result.
        Raises :class:`WorkflowNotFailedError` unless it failed, :class:`WorkflowBusyError`
        while an error callback of the failure is dispatched or running."""
        wf, sid = split_key(key)
        await self._watch(wf)
        reply = await self._call(wf, "retry", sid)
        if reply[0] == "err":
            code = reply[1]
            if code == "not_failed":
                raise WorkflowNotFailedError(
                    f"{key} is {reply[2]}, not failed; only a failed workflow can be retried"
                    " (wait for it to finish, or resume it if it is held)"
                )
            if code == "busy":
                raise WorkflowBusyError(
                    f"{key}: error callbacks of its failure are still dispatched or running;"
                    f" retry once they have finished (`mageflow tree {key}` shows them)"
                )
            if code == "not_root":
                raise SignatureInUseError(
                    f"{key} is part of a larger workflow; retry its root {wf}.r instead"
                )
            _raise_for(key, reply)
        return await self._collected(wf, decode_transition(wf, reply))

    async def cancel(self, key: str) -> tuple[list[str], Transition]:
        """Cancel ``key``: a root for good, or a node inside a workflow (which its parent
        then counts as failed). Returns the run ids to cancel and what its parent's
        reaction dispatched."""
        wf, sid = split_key(key)
        if sid != ROOT:
            await self._watch(wf)
        reply = await self._call(wf, "cancel", sid)
        if reply[0] == "err":
            _raise_for(key, reply)
        run_ids = [r for r in json.loads(reply[1]) if r]
        if len(reply) <= 2:
            return run_ids, Transition()
        transition = decode_transition(wf, [reply[0], *reply[2:]])
        return run_ids, await self._woken(wf, transition)

    # -- the reconciler ---------------------------------------------------------------------
    async def claim_due(self, lease: float, limit: int) -> list[str]:
        """Lease up to ``limit`` workflows due for a reconcile pass for ``lease`` s (no
        other sweeper takes them meanwhile)."""
        reply = await self.store.run_script(
            self.script,
            [self.store.live_key],
            self._argv("claim", [str(int(lease * 1000)), str(limit)]),
        )
        return list(reply) if isinstance(reply, list) else []

    async def reconcile(self, wf: str, limit: int = 500) -> Reconciled:
        """Re-send what ``wf`` dispatched and never started, once due."""
        reply = await self._call(wf, "reconcile", str(limit))
        if reply[0] == "gone":
            return Reconciled([], None, None)
        collected = Transition(collecting=len(reply) > 5 and reply[5] == "1")
        collected = await self._collected(wf, collected)
        return Reconciled(
            decode_publishes(wf, reply[1]) + collected.publishes,
            float(reply[2]) if reply[2] else None,
            reply[3],
            int(reply[4]),
        )

    async def _watch(self, wf: str) -> None:
        """Put ``wf`` in the reconciler's live index *before* a client transition that
        dispatches, so a client dying right after it still leaves the work findable."""
        due = int(time.time() * 1000 + self.resend_after * 1000)
        await self.store.set_live({wf: due}, earlier_only=True)

    async def _collected(self, wf: str, transition: Transition) -> Transition:
        """``transition`` with the ``collect`` transitions that finish assembling the big
        swarm results it left part-assembled (one bounded call each; a caller dying
        meanwhile leaves them to the reconciler)."""
        if not transition.collecting:
            return transition
        publishes, events = list(transition.publishes), list(transition.events)
        wake = transition.wake_ms
        more = True
        while more:
            step = decode_transition(wf, await self._call(wf, "collect"))
            publishes += step.publishes
            events += step.events
            if step.wake_ms is not None:
                wake = step.wake_ms if wake is None else min(wake, step.wake_ms)
            more = step.collecting
        return Transition(publishes, events, wake, transition.duplicate)

    async def _woken(self, wf: str, transition: Transition) -> Transition:
        """A transition that made a node wait for its time: the reconciler looks at ``wf``
        no later than that time."""
        transition = await self._collected(wf, transition)
        if transition.wake_ms is not None:
            await self.store.set_live({wf: transition.wake_ms}, earlier_only=True)
            if self.on_wake is not None:
                self.on_wake(transition.wake_ms)
        return transition

    async def payload(self, key: str) -> str | None:
        """The JSON payload task ``key`` is (or would be) dispatched with; ``None`` when
        ``key`` is not a task."""
        wf, sid = split_key(key)
        reply = await self._call(wf, "payload", sid)
        return reply[1] if reply[0] == "ok" else None

    # -- waiting ------------------------------------------------------------------------------
    async def wait(self, key: str, timeout: float | None) -> str:
        """Block until ``key`` is terminal (pushed by the script); returns its status.
        Raises :class:`SignatureNotFoundError` for a key that is unknown or expired (and
        writes nothing then), :class:`TimeoutError` after ``timeout`` seconds."""
        wf, sid = split_key(key)
        status: list[str | None] = [None]
        # a node exists while its definition (the field named by its sid) does, a
        # templated swarm item while its run record does
        guards = [sid, F.of(sid, F.RECORD)] if F.item_swarm(sid) else [sid]
        if not await self.store.set_if_present(wf, guards, F.of(sid, F.WAITED), "1"):
            raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")

        async def settled() -> bool:
            (status[0],) = await F.read_node(self.store, wf, sid, [F.STATUS])
            return status[0] in F.TERMINAL

        await self.store.wait_published(wf, F.DONE_CHANNEL, sid, settled, timeout)
        return str(status[0])
