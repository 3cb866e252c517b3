"""Whatever a job raises and however its keys misbehave, every admitted job
resolves once, its keys move on, and a call that raises leaves no trace."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract.runners import RUNNERS, running
from tests.helpers import WAIT

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kind", RUNNERS)]


class CustomStop(BaseException):
    """A BaseException that is neither an Exception nor one Python knows."""


# KeyboardInterrupt and SystemExit stop an event loop by asyncio's design
# (the job's future still resolves first): only the thread runner gets them.
RAISES: dict[str, list[type[BaseException] | None]] = {
    "thread": [None, ValueError, SystemExit, KeyboardInterrupt, GeneratorExit, CustomStop],
    "asyncio": [None, ValueError, GeneratorExit, CustomStop],
}


class Colliding:
    """Hashes like every other Colliding key; compares by identity."""

    def __hash__(self) -> int:
        return 7


class RaisingEq(Colliding):
    """Comparing it with another key raises (on a hash collision with a live key)."""

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise ArithmeticError("no comparison")

    __hash__ = Colliding.__hash__


class Mutable:
    """Hashed by a value the test changes after submit (the user's error)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(("m", self.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mutable) and other.value == self.value


class Unprintable:
    def __str__(self) -> str:
        raise LookupError("no text")


def raiser(kind: type[BaseException] | None) -> Any:
    def job() -> str:
        if kind is not None:
            raise kind("from the job")
        return "ok"

    return job


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), workers=st.integers(1, 3), halt=st.booleans())
def test_every_admitted_job_resolves_once_and_raising_calls_leave_no_trace(
    kind: str, data: st.DataObject, workers: int, halt: bool
) -> None:
    live = Colliding()  # a live key every RaisingEq collides with
    mutables = [Mutable(i) for i in range(2)]
    key_pool: list[Any] = ["a", "b", live, Unprintable(), *mutables]
    plan = data.draw(
        st.lists(
            st.tuples(
                st.lists(st.sampled_from(range(len(key_pool))), min_size=1, max_size=2, unique=True),
                st.sampled_from(RAISES[kind]),
                st.booleans(),  # add a RaisingEq key to the call
            ),
            min_size=1,
            max_size=20,
        )
    )
    admitted: list[concurrent.futures.Future[Any]] = []
    refused = 0
    with running(kind, workers, debug=False, halt_on_error=halt) as r:
        for indexes, raises, bad in plan:
            keys = [key_pool[i] for i in indexes]
            if bad:
                keys.append(RaisingEq())
            before = r.stats().submitted
            try:
                admitted.append(r.submit_multi(keys, raiser(raises)))
            except ArithmeticError:
                refused += 1
                assert r.stats().submitted == before, "a refused submit was counted"
            if data.draw(st.booleans(), label="mutate a key"):
                mutables[0].value += 10
        for key in key_pool:
            r.resume(key)
        _, not_done = concurrent.futures.wait(admitted, timeout=WAIT)
        assert not not_done, f"{len(not_done)} admitted jobs never resolved"
    stats = r.stats()
    assert stats.submitted == len(admitted)
    outcomes = stats.completed + stats.failed + stats.cancelled + stats.timed_out + stats.superseded
    assert outcomes == len(admitted)
    assert (stats.pending, stats.running, stats.active_shards) == (0, 0, 0)
    for future in admitted:
        assert future.done()
