"""Pydantic models: signatures, swarm configuration, statuses, ``ReturnValue``."""

from mageflow.models.config import SwarmConfig
from mageflow.models.context import TaskContext
from mageflow.models.retry import Backoff, retry_policy
from mageflow.models.return_value import ReturnValue, return_value_field
from mageflow.models.signatures import NodeDef, SignatureState
from mageflow.models.status import SignatureStatus

__all__ = [
    "Backoff",
    "NodeDef",
    "ReturnValue",
    "SignatureState",
    "SignatureStatus",
    "SwarmConfig",
    "TaskContext",
    "retry_policy",
    "return_value_field",
]
