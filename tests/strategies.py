"""Hypothesis strategies shared by the property tests.

They build on the public ones in :mod:`keyed_dispatch.testing` (which users
get too) and add what only our own tests need: job durations and dispatcher
settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

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
