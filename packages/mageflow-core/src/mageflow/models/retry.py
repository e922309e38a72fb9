"""How long a failed task waits before its next attempt: :class:`Backoff`."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from mageflow.errors import InvalidRetryPolicyError


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential retry backoff with a cap and jitter.

    The delay before retry ``n`` (``n = 1`` before the second attempt, ``n = 2`` before
    the third, ...) is ``min(max, initial * factor ** (n - 1)) * (1 - jitter * u)``
    with ``u`` drawn uniformly from ``[0, 1)``: it grows by ``factor`` from ``initial``
    up to the cap ``max``, and a random part of at most ``jitter`` of it is taken off, so
    that tasks that failed together do not all retry together. ``max`` is a hard upper
    bound; ``jitter=0`` makes the delays exact, ``jitter=1`` is "full jitter" (anything
    from 0 to the capped delay). All values are seconds.

    :raises InvalidRetryPolicyError: a value is negative or not finite, ``factor < 1``,
        ``max < initial`` or ``jitter`` outside ``[0, 1]``.
    """

    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRetryPolicyError(
                    f"Backoff({name}=...) must be a number of seconds, got {value!r}"
                )
            if not math.isfinite(value) or value < 0:
                raise InvalidRetryPolicyError(
                    f"Backoff({name}={value!r}) must be a finite number >= 0"
                )
        if self.factor < 1:
            raise InvalidRetryPolicyError(
                f"Backoff(factor={self.factor!r}) would shrink the delays: use factor >= 1 "
                "(1 keeps them constant)"
            )
        if self.max < self.initial:
            raise InvalidRetryPolicyError(
                f"Backoff(max={self.max!r}) is below initial={self.initial!r}: the cap must "
                "be at least the first delay"
            )
        if self.jitter > 1:
            raise InvalidRetryPolicyError(
                f"Backoff(jitter={self.jitter!r}) is the largest fraction of a delay taken "
                "off at random: use a value from 0 to 1"
            )

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """The same delay before every retry, without jitter."""
        return cls(initial=seconds, factor=1.0, max=seconds, jitter=0.0)

    def bounds(self, retry: int) -> tuple[float, float]:
        """The shortest and longest delay before retry ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        capped = self.initial
        # compare logarithms first: factor ** (retry - 1) overflows for large retries
        if self.factor > 1 and self.initial > 0:
            grown = (retry - 1) * math.log(self.factor) + math.log(self.initial)
            if grown >= math.log(self.max):
                capped = self.max
            else:
                capped = min(self.max, self.initial * self.factor ** (retry - 1))
        return capped * (1 - self.jitter), capped

    def delay(self, retry: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``retry`` (1-based), jitter drawn with ``rand``
        (a number in ``[0, 1)``). The one formula every backend uses."""
        shortest, longest = self.bounds(retry)
        return longest - (longest - shortest) * rand()


def retry_policy(retries: int, backoff: Backoff | float | None) -> Backoff | None:
    """Check a task's ``retries=`` / ``backoff=`` and normalise ``backoff``: a number is a
    constant delay in seconds. With ``retries=0`` a backoff is accepted and never used
    (one policy can be shared by tasks with and without retries).

    :raises InvalidRetryPolicyError: ``retries`` is not an integer >= 0, or the backoff
        is invalid."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidRetryPolicyError(
            f"retries={retries!r}: give the number of extra attempts, an integer >= 0"
        )
    if backoff is None or isinstance(backoff, Backoff):
        return backoff
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
        raise InvalidRetryPolicyError(
            f"backoff={backoff!r}: give a mageflow.Backoff(...) or a number of seconds"
        )
    return Backoff.constant(backoff)
