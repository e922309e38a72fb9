from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mageflow.errors import InvalidSwarmConfigError


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

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            wrong = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidSwarmConfigError(
                f"invalid SwarmConfig ({wrong}); max_concurrency and stop_after_n_failures "
                "are whole numbers of at least 1, or None for no limit"
            ) from None
