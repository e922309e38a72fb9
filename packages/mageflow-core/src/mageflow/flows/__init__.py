"""Orchestration: building workflows, the user-facing handles, and the worker wrapper."""

from mageflow.flows.handles import ChainSignature, Signature, SwarmSignature

__all__ = ["ChainSignature", "Signature", "SwarmSignature"]
