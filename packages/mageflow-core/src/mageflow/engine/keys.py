"""Signature keys: ``"<wf>.<sid>"``, a workflow id and a node id inside it."""

from __future__ import annotations

import re

from mageflow.errors import InvalidKeyError

ROOT = "r"
"""The node id of every workflow's root."""

_KEY = re.compile(r"(?P<wf>[A-Za-z0-9_-]{1,128})\.(?P<sid>r(?:\.[A-Za-z0-9_-]{1,64}){0,200})")
"""A workflow id (no hash-tag braces, no dots) and a node id: ``r``, then dotted segments
(``r.0``, ``r.i3f2a...``, ``r.s0``). Never a ``:``, so a key cannot name a state field."""


def split_key(key: str) -> tuple[str, str]:
    """``"<wf>.<sid>"`` -> ``(wf, sid)``. Raises :class:`InvalidKeyError` for anything
    that is not a key MageFlow hands out (``sig.key``)."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        shown = repr(key) if len(repr(key)) <= 120 else repr(key)[:117] + "..."
        raise InvalidKeyError(
            f"{shown} is not a MageFlow signature key; pass a key as `sig.key` gives it "
            "('<workflow id>.r' or '<workflow id>.r.<node>')"
        )
    return m["wf"], m["sid"]


def join_key(wf: str, sid: str) -> str:
    return f"{wf}.{sid}"
