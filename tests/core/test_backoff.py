"""The one backoff formula (:class:`mageflow.Backoff`) and how a task's policy is checked."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mageflow import Backoff, Mageflow
from mageflow.backend.base import TaskDefinition
from mageflow.backend.local import LocalBackend
from mageflow.errors import InvalidRetryPolicyError

BELOW_ONE = 1 - 2**-53  # the largest value random.random() returns


def test_delays_grow_by_factor_from_initial_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, max=5.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_takes_off_at_most_its_fraction_of_the_capped_delay() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, max=5.0, jitter=0.25)
    assert backoff.delay(2, rand=lambda: 0.0) == 2.0
    assert backoff.delay(2, rand=lambda: 0.5) == 1.75
    assert 1.5 <= backoff.delay(2, rand=lambda: BELOW_ONE) < 2.0
    assert backoff.bounds(2) == (1.5, 2.0)
    assert backoff.bounds(10) == (3.75, 5.0)  # at the cap the delays still spread


def test_full_jitter_spreads_from_zero() -> None:
    assert Backoff(initial=4.0, factor=1.0, max=4.0, jitter=1.0).bounds(3) == (0.0, 4.0)


def test_huge_retry_numbers_do_not_overflow() -> None:
    assert Backoff(initial=0.5, factor=10.0, max=30.0).bounds(10_000)[1] == 30.0


def test_constant_and_zero_backoffs() -> None:
    assert [Backoff.constant(0.3).delay(n) for n in (1, 2, 50)] == [0.3, 0.3, 0.3]
    assert Backoff(initial=0.0).bounds(7) == (0.0, 0.0)


backoffs = st.builds(
    lambda initial, extra, factor, jitter: Backoff(
        initial=initial, factor=factor, max=initial + extra, jitter=jitter
    ),
    st.floats(0, 1e4),
    st.floats(0, 1e4),
    st.floats(1, 100),
    st.floats(0, 1),
)


@given(backoffs, st.integers(1, 10_000), st.floats(0, BELOW_ONE))
def test_every_delay_lies_in_its_bounds_below_the_cap(
    backoff: Backoff, retry: int, u: float
) -> None:
    shortest, longest = backoff.bounds(retry)
    delay = backoff.delay(retry, rand=lambda: u)
    assert 0 <= shortest <= delay <= longest <= backoff.max
    assert math.isclose(shortest, longest * (1 - backoff.jitter), abs_tol=1e-9)


@given(backoffs, st.integers(1, 10_000))
def test_bounds_never_shrink_from_one_retry_to_the_next(backoff: Backoff, retry: int) -> None:
    now, later = backoff.bounds(retry), backoff.bounds(retry + 1)
    assert later[1] >= now[1] * (1 - 1e-12)
    assert later[0] >= now[0] * (1 - 1e-12)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"initial": -1.0}, "finite number >= 0"),
        ({"max": math.inf}, "finite number >= 0"),
        ({"jitter": math.nan}, "finite number >= 0"),
        ({"factor": 0.5}, "factor >= 1"),
        ({"initial": 10.0, "max": 5.0}, "at least the first delay"),
        ({"jitter": 1.5}, "from 0 to 1"),
        ({"initial": "1"}, "number of seconds"),
        ({"max": True}, "number of seconds"),
    ],
)
def test_invalid_backoffs_raise_saying_what_to_use(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRetryPolicyError, match=says):
        Backoff(**fields)


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        Backoff().bounds(0)


def test_task_definition_retry_delay_is_the_backoff_s_or_zero() -> None:
    async def handler(payload: Any, ctx: Any) -> None:
        return None

    constant = TaskDefinition("t", handler, retries=3, backoff=Backoff.constant(0.25))
    assert constant.retry_delay(2) == 0.25
    assert TaskDefinition("t", handler, retries=3).retry_delay(2) == 0.0


# -- registration ------------------------------------------------------------------------
def app() -> Mageflow:
    return Mageflow(backend=LocalBackend(), redis_url="memory://")


def test_a_number_is_a_constant_backoff_carried_to_the_backend() -> None:
    mf = app()

    @mf.task("t", retries=2, backoff=0.5)
    async def t(message: dict[str, Any]) -> None:
        return None

    backend = mf.backend
    assert isinstance(backend, LocalBackend)
    assert backend.definitions["t"].backoff == Backoff.constant(0.5)
    assert mf.tasks["t"].backoff == Backoff.constant(0.5)


def test_a_backoff_without_retries_is_accepted_and_unused() -> None:
    mf = app()
    mf.task("t", backoff=Backoff())(lambda message: None)
    assert mf.tasks["t"].retries == 0


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"retries": -1}, "integer >= 0"),
        ({"retries": 1.5}, "integer >= 0"),
        ({"retries": 2, "backoff": -0.1}, "finite number >= 0"),
        ({"retries": 2, "backoff": "1s"}, "mageflow.Backoff"),
    ],
)
def test_an_invalid_policy_raises_at_registration_and_registers_nothing(
    options: dict[str, Any], says: str
) -> None:
    mf = app()
    with pytest.raises(InvalidRetryPolicyError, match=says):
        mf.task("t", **options)(lambda message: None)
    assert "t" not in mf.tasks
    backend = mf.backend
    assert isinstance(backend, LocalBackend)
    assert "t" not in backend.definitions
