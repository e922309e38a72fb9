from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SwarmConfig(BaseModel):
    """How a swarm runs its items.

    ``max_concurrency``: at most this many items run at once, across all workers
    (``None``: no cap). ``stop_after_n_failures``: the N-th failed item stops the swarm,
    queued items never start and the error callbacks fire once (``None``: failures never
    stop it; the success callbacks fire with failed items marked in the results).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int | None = Field(default=None, ge=1)
    stop_after_n_failures: int | None = Field(default=None, ge=1)
