"""Hypothesis strategies shared by the property tests.

They build on the public ones in :mod:`keyed_dispatch.testing` (which users
get too) and add what only our own tests need: job durations and dispatcher
settings.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from hypothesis import strategies as st

from keyed_dispatch import webhook_key
from keyed_dispatch.testing import JobSpec, job_specs

KEYS = ("a", "b", "c", "d", "e")


@dataclass(frozen=True)
class TimedJob:
    """A generated job plus how long its body works (standing for real
    work, so that jobs overlap, queue up and miss start deadlines)."""

    spec: JobSpec
    work: float

    def steps(self) -> tuple[float, Callable[[], str]]:
        """The job as steps for ``Runner.job``: work, then fail or return its keys as text."""
        spec = self.spec

        def finish() -> str:
            if spec.fail:
                raise ValueError(f"job on {spec.keys} failed on purpose")
            return "+".join(map(str, spec.keys))

        return self.work, finish


def timed_jobs(*, failures: bool = True, cancellations: bool = True) -> st.SearchStrategy[TimedJob]:
    """One job over :data:`KEYS`: mostly instant, some working 1-3 ms."""
    return st.builds(
        TimedJob,
        spec=job_specs(KEYS, max_keys_per_job=3, failures=failures, cancellations=cancellations),
        work=st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.003]),
    )


def timed_workloads(
    *, max_jobs: int = 40, failures: bool = True, cancellations: bool = True
) -> st.SearchStrategy[list[TimedJob]]:
    """A list of :func:`timed_jobs`, in submission order."""
    return st.lists(timed_jobs(failures=failures, cancellations=cancellations), max_size=max_jobs)


max_workers = st.integers(min_value=1, max_value=4)
"""Small pools, so that keys compete for workers."""

start_timeouts = st.one_of(st.none(), st.sampled_from([0.001, 0.005, 0.02]))
"""No deadline, or one short enough that some queued jobs miss it."""


_KEY_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.integers(),
    st.sampled_from([-0.0, 0.0, 1.0, -2.0, 0.5, 1e-05, 1e16, 2.0**53, 1.5e300]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "1", "7", "a", "A", "é", '"', "\\", "\x00", "[1]", "null", "1.0", "true"]),
    st.text(max_size=4),
)


def distributed_keys() -> st.SearchStrategy[Hashable]:
    """Keys the PostgreSQL mode accepts: str, int, bool, float, None and tuples of them.

    Small pools, so that equal keys (and texts alike, such as ``7`` and
    ``"7"``) come up often; pair a key with :func:`equal_keys` for keys equal
    to it but of other types.
    """
    return st.recursive(
        _KEY_SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=3).map(tuple), st.builds(webhook_key, inner, inner)),
        max_leaves=8,
    )


@st.composite
def equal_keys(draw: st.DrawFn, key: Hashable) -> Hashable:
    """A key equal to ``key``, perhaps of other types: 1 as 1.0 or True, a pair as a WebhookKey."""
    if isinstance(key, tuple):
        items = tuple(draw(equal_keys(item)) for item in key)
        if len(items) == 2 and draw(st.booleans()):
            return webhook_key(*items)
        return items
    choices: list[Hashable] = [key]
    if isinstance(key, int) and abs(key) <= 2**53:
        choices.append(float(key))
    if isinstance(key, float) and key.is_integer():
        choices.append(int(key))
    if isinstance(key, (int, float)) and key in (0, 1):
        choices.append(bool(key))
    return draw(st.sampled_from(choices))
