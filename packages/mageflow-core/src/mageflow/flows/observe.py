"""Telling observers (pluggy hooks and the ``mageflow.events`` logger) what happened.

Nothing is built unless somebody listens: with no hook implementation and DEBUG off, an
event costs one logger check and one hook lookup on the task's hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mageflow.engine import EngineEvent, join_key, split_key
from mageflow.models.events import WorkflowEvent
from mageflow.plugins.manager import plugin_manager

log = logging.getLogger("mageflow.events")


def _parent_of(key: str) -> str | None:
    wf, sid = split_key(key)
    head, sep, _ = sid.rpartition(".")
    return join_key(wf, head) if sep else None


def root_of(key: str) -> str:
    wf, _ = split_key(key)
    return join_key(wf, "r")


def _listeners(hook_name: str) -> Any:
    """The hook caller when it has implementations, else ``None``."""
    hook = getattr(plugin_manager().hook, hook_name)
    return hook if hook.get_hookimpls() else None


def emit(hook_name: str, key: str, **fields: Any) -> None:
    """Build the event for ``key``, log it and call the hook; never raises."""
    hook = _listeners(hook_name)
    debug = log.isEnabledFor(logging.DEBUG)
    if hook is None and not debug:
        return
    event = WorkflowEvent(
        name=hook_name.removeprefix("mageflow_"),
        key=key,
        workflow=root_of(key),
        parent=_parent_of(key),
        **fields,
    )
    if debug:
        log.debug("%s %s", event.name, key, extra={"mageflow": event.as_dict()})
    if hook is None:
        return
    try:
        hook(event=event)
    except Exception:
        log.exception("observer hook %s failed", hook_name)


_STORE_HOOKS = (
    "mageflow_chain_advanced",
    "mageflow_swarm_item_done",
    "mageflow_workflow_finished",
)


def store_events(events: Sequence[EngineEvent]) -> None:
    """Translate what a transition reported into hook calls. With nobody listening the
    events are not read, so a transition's reply never has them decoded."""
    if not log.isEnabledFor(logging.DEBUG) and all(_listeners(h) is None for h in _STORE_HOOKS):
        return
    for ev in events:
        if ev.name == "advanced":
            emit("mageflow_chain_advanced", ev.key, kind="chain", related=ev.detail)
        elif ev.name == "continued":
            continue  # the task settles when the workflow it returned does
        elif ev.name == "item":
            status = "done" if ev.ok else "failed"
            emit("mageflow_swarm_item_done", ev.key, kind="swarm", related=ev.detail, status=status)
        elif ev.detail != "task" or split_key(ev.key)[1] == "r":
            started = None if ev.started_ms is None else ev.started_ms / 1000
            emit(
                "mageflow_workflow_finished",
                ev.key,
                kind=ev.detail,
                status=ev.name,
                started_at=started,
            )
