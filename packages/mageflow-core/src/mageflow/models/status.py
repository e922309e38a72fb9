from __future__ import annotations

from enum import Enum


class SignatureStatus(str, Enum):
    """Where a signature, chain or swarm is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    INTERRUPTED = "interrupted"
    CANCELED = "canceled"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    """A graph node whose required dependency did not succeed, or a branch case not
    chosen: it never runs and none of its callbacks fire."""

    @property
    def is_terminal(self) -> bool:
        return self in (
            SignatureStatus.DONE,
            SignatureStatus.FAILED,
            SignatureStatus.CANCELED,
            SignatureStatus.SKIPPED,
        )
