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

    @property
    def is_terminal(self) -> bool:
        return self in (SignatureStatus.DONE, SignatureStatus.FAILED, SignatureStatus.CANCELED)
