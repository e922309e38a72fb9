"""``wf.events()``: a node's state changes, read from the stream the engine appends to.

Every transition appends its state changes to the workflow's ``H:events`` stream in the
same atomic call; a reader blocks on it (``XREAD BLOCK`` in Redis, an in-process wake-up
in memory), so events are pushed, never polled. One entry holds one transition's
changes. A reader that starts late replays the stream from its beginning (capped at the
newest 10,000 entries per workflow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mageflow.engine import ROOT, split_key
from mageflow.engine import fields as F
from mageflow.errors import SignatureNotFoundError
from mageflow.flows.inspect import Readable
from mageflow.models.events import StreamedEvent
from mageflow.models.status import SignatureStatus

SAFETY_WAIT = 5.0
"""Seconds a read blocks; when nothing came, the node's status is read once (it may have
ended while its events were trimmed from the stream, or expired) before blocking again."""


def _ended(status: str | None) -> bool:
    return status is None or SignatureStatus(status).is_terminal


async def node_events(
    mf: Readable, key: str, *, after: str = "0", wait: float = SAFETY_WAIT
) -> AsyncIterator[StreamedEvent]:
    """Events of node ``key`` and every node under it (steps, items, callbacks), in order,
    from stream id ``after``; ends after the node's (or its root's) terminal event.
    Raises :class:`SignatureNotFoundError` for an unknown or expired key."""
    wf, sid = split_key(key)
    (status,) = await F.read_node(mf.store, wf, sid, [F.STATUS])
    if status is None:
        raise SignatureNotFoundError(f"no signature stored under {key!r} (unknown or expired)")
    below = sid + "."
    cursor = after
    while True:
        entries = await mf.store.read_events(wf, cursor, wait)
        if not entries:
            (mine,), (root,) = await F.read_nodes(mf.store, wf, [sid, ROOT], [F.STATUS])
            if _ended(mine) or _ended(root):
                return
            continue
        for entry_id, raw in entries:
            cursor = entry_id
            ended = False
            for event in StreamedEvent.from_entry(wf, entry_id, raw):
                node = split_key(event.key)[1]
                if node == sid or node.startswith(below):
                    yield event
                ended = ended or (event.is_terminal and node in (sid, ROOT))
            if ended:  # the rest of that transition's changes were yielded too
                return
