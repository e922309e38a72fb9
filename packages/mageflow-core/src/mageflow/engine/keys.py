"""Signature keys: ``"<wf>.<sid>"``, a workflow id and a node id inside it."""

from __future__ import annotations

from mageflow.errors import SignatureNotFoundError

ROOT = "r"
"""The node id of every workflow's root."""


def split_key(key: str) -> tuple[str, str]:
    """``"<wf>.<sid>"`` -> ``(wf, sid)``."""
    wf, sep, sid = key.partition(".")
    if not sep or not wf or not sid:
        raise SignatureNotFoundError(f"{key!r} is not a MageFlow signature key")
    return wf, sid


def join_key(wf: str, sid: str) -> str:
    return f"{wf}.{sid}"
