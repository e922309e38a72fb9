"""The one orchestration state machine (``transitions.lua``), its typed replies and the
operations that run it. See ``docs/internals.md`` for the glossary."""

from mageflow.engine.keys import ROOT, join_key, split_key
from mageflow.engine.ops import SCRIPT, Engine
from mageflow.engine.replies import EngineEvent, Publish, Reconciled, StartOutcome, Transition

__all__ = [
    "ROOT",
    "SCRIPT",
    "Engine",
    "EngineEvent",
    "Publish",
    "Reconciled",
    "StartOutcome",
    "Transition",
    "join_key",
    "split_key",
]
