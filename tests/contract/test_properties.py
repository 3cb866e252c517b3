"""Property tests: random workloads keep every ordering guarantee, on each runner."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Hashable
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import DispatcherStats, KeyHalted, StartTimeout
from keyed_dispatch.testing import OrderRecorder
from tests.contract.runners import RUNNERS, declare_cancelled_runs, running
from tests.helpers import WAIT, assert_consistent
from tests.strategies import TimedJob, max_workers, start_timeouts, timed_workloads

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kind", RUNNERS)]


def run_workload(
    kind: str, jobs: list[TimedJob], workers: int, **options: Any
) -> tuple[OrderRecorder, list[Future[Any]], DispatcherStats]:
    """Submit ``jobs`` in order (cancelling those marked), drain, return what happened.

    A cancel may come after its job started: the thread runner then lets
    the job finish, the asyncio runner cancels it while it runs.
    """
    rec = OrderRecorder()
    futures: list[Future[Any]] = []
    with running(kind, workers, debug=False, **options) as r:
        for job in jobs:
            future = rec.submit(r, job.spec.keys, r.job(*job.steps()))
            if job.spec.cancel:
                future.cancel()
            futures.append(future)
        _, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        assert not not_done, f"{len(not_done)} jobs never finished"
    # After the shutdown: a future is done a moment before its job retires.
    declare_cancelled_runs(rec, r)
    return rec, futures, r.stats()


@PROPERTY_SETTINGS
@given(jobs=timed_workloads(), workers=max_workers, start_timeout=start_timeouts)
def test_random_workloads_keep_order_and_exclusion(
    kind: str, jobs: list[TimedJob], workers: int, start_timeout: float | None
) -> None:
    rec, futures, stats = run_workload(kind, jobs, workers, start_timeout=start_timeout)
    # Order, exclusion, exactly-once (the recorder derives from each future
    # whether its job must have run).
    rec.check()
    for job, future in zip(jobs, futures, strict=True):
        if future.cancelled():
            assert job.spec.cancel
            continue
        error = future.exception()
        if isinstance(error, StartTimeout):
            assert start_timeout is not None
        elif job.spec.fail:
            assert isinstance(error, ValueError)
        else:
            assert future.result() == "+".join(map(str, job.spec.keys))
    assert_consistent(stats)
    assert (stats.submitted, stats.pending, stats.running, stats.active_shards) == (len(jobs), 0, 0, 0)
    assert stats.cancelled == sum(f.cancelled() for f in futures)
    assert stats.timed_out == sum(
        isinstance(f.exception(), StartTimeout) for f in futures if not f.cancelled()
    )
    assert stats.workers <= workers


@PROPERTY_SETTINGS
@given(jobs=timed_workloads(max_jobs=30), workers=max_workers, start_timeout=start_timeouts)
def test_halt_on_error_matches_the_model(
    kind: str, jobs: list[TimedJob], workers: int, start_timeout: float | None
) -> None:
    # Model: in admission order, a job that did run and failed halts its
    # keys; every later job touching a halted key fails with KeyHalted
    # (cancelled and expired jobs neither run nor halt; a job cancelled
    # while it ran did not fail).
    rec, futures, _ = run_workload(kind, jobs, workers, start_timeout=start_timeout, halt_on_error=True)
    rec.check()
    halted: dict[Hashable, BaseException] = {}
    for job, future in zip(jobs, futures, strict=True):
        if future.cancelled() or isinstance(future.exception(), StartTimeout):
            continue
        error = future.exception()
        stopped = [key for key in job.spec.keys if key in halted]
        if stopped:
            assert isinstance(error, KeyHalted), (job, error)
            assert error.key in stopped
            assert error.__cause__ is halted[error.key]
        elif job.spec.fail:
            assert isinstance(error, ValueError)
            halted.update(dict.fromkeys(job.spec.keys, error))
        else:
            assert error is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=timed_workloads(max_jobs=30, failures=False, cancellations=False),
    threads=st.integers(min_value=2, max_value=4),
)
def test_concurrent_submitters(kind: str, jobs: list[TimedJob], threads: int) -> None:
    # Several threads submit slices of the workload at once; the recorder's
    # admission lock makes its order the true admission order.
    rec = OrderRecorder()
    with running(kind, 3, debug=False) as r:
        futures: list[Future[Any]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def submit_slice(part: list[TimedJob]) -> None:
            barrier.wait(WAIT)
            for job in part:
                future = rec.submit(r, job.spec.keys, r.job(*job.steps()))
                with lock:
                    futures.append(future)

        submitters = [threading.Thread(target=submit_slice, args=(jobs[i::threads],)) for i in range(threads)]
        for submitter in submitters:
            submitter.start()
        for submitter in submitters:
            submitter.join(WAIT)
        _, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        assert not not_done
    rec.check()
    assert len(rec.ran()) == len(jobs)
