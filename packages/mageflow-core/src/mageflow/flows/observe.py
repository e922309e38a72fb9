"""Telling observers (pluggy hooks and the ``mageflow.events`` logger) what happened."""

from __future__ import annotations

import logging
from typing import Any

from mageflow.models.events import WorkflowEvent
from mageflow.plugins.manager import plugin_manager
from mageflow.store.base import StoreEvent, join_key, split_key

log = logging.getLogger("mageflow.events")


def _parent_of(key: str) -> str | None:
    wf, sid = split_key(key)
    head, sep, _ = sid.rpartition(".")
    return join_key(wf, head) if sep else None


def root_of(key: str) -> str:
    wf, _ = split_key(key)
    return join_key(wf, "r")


def emit(hook_name: str, event: WorkflowEvent) -> None:
    """Log the event and call the hook's implementations; never raises."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s",
            hook_name.removeprefix("mageflow_"),
            event.key,
            extra={"mageflow": event.as_dict()},
        )
    hook = getattr(plugin_manager().hook, hook_name)
    if not hook.get_hookimpls():
        return
    try:
        hook(event=event)
    except Exception:
        log.exception("observer hook %s failed", hook_name)


def task_event(hook_name: str, key: str, task_name: str, **fields: Any) -> None:
    emit(
        hook_name,
        WorkflowEvent(
            name=hook_name.removeprefix("mageflow_"),
            key=key,
            workflow=root_of(key),
            task_name=task_name,
            parent=_parent_of(key),
            **fields,
        ),
    )


def store_events(events: list[StoreEvent]) -> None:
    """Translate what a transition reported into hook calls."""
    for ev in events:
        if ev.name == "advanced":
            emit(
                "mageflow_chain_advanced",
                WorkflowEvent(
                    name="chain_advanced",
                    key=ev.key,
                    workflow=root_of(ev.key),
                    kind="chain",
                    parent=_parent_of(ev.key),
                    related=ev.detail,
                ),
            )
        elif ev.name == "item":
            emit(
                "mageflow_swarm_item_done",
                WorkflowEvent(
                    name="swarm_item_done",
                    key=ev.key,
                    workflow=root_of(ev.key),
                    kind="swarm",
                    parent=_parent_of(ev.key),
                    related=ev.detail,
                    status="done" if ev.ok else "failed",
                ),
            )
        elif ev.detail != "task" or split_key(ev.key)[1] == "r":
            emit(
                "mageflow_workflow_finished",
                WorkflowEvent(
                    name="workflow_finished",
                    key=ev.key,
                    workflow=root_of(ev.key),
                    kind=ev.detail,
                    parent=_parent_of(ev.key),
                    status=ev.name,
                    started_at=None if ev.started_ms is None else ev.started_ms / 1000,
                ),
            )
