"""Property tests: random workloads keep every ordering guarantee."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Hashable
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import KeyHalted, StartTimeout
from keyed_dispatch.testing import OrderRecorder
from tests.contract.test_stats import assert_consistent
from tests.helpers import WAIT, checked_dispatcher
from tests.strategies import TimedJob, max_workers, start_timeouts, timed_workloads

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def run_workload(
    jobs: list[TimedJob], workers: int, **options: Any
) -> tuple[OrderRecorder, list[Future[Any]], Any]:
    """Submit ``jobs`` in order (cancelling those marked), drain, return what happened."""
    rec = OrderRecorder()
    futures: list[Future[Any]] = []
    with checked_dispatcher(workers, **options) as d:
        for job in jobs:
            future = rec.submit(d, job.spec.keys, job.body())
            if job.spec.cancel:
                future.cancel()
            futures.append(future)
        _, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        assert not not_done, f"{len(not_done)} jobs never finished"
    # After the shutdown: a future is done a moment before its job retires.
    return rec, futures, d.stats()


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(jobs=timed_workloads(), workers=max_workers, start_timeout=start_timeouts)
def test_random_workloads_keep_order_and_exclusion(
    jobs: list[TimedJob], workers: int, start_timeout: float | None
) -> None:
    rec, futures, stats = run_workload(jobs, workers, start_timeout=start_timeout)
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
    assert (stats.submitted, stats.pending, stats.running) == (len(jobs), 0, 0)
    assert stats.cancelled == sum(f.cancelled() for f in futures)
    assert stats.timed_out == sum(
        isinstance(f.exception(), StartTimeout) for f in futures if not f.cancelled()
    )
    assert stats.workers <= workers


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(jobs=timed_workloads(max_jobs=30), workers=max_workers, start_timeout=start_timeouts)
def test_halt_on_error_matches_the_model(
    jobs: list[TimedJob], workers: int, start_timeout: float | None
) -> None:
    # Model: in admission order, a job that did run and failed halts its
    # keys; every later job touching a halted key fails with KeyHalted
    # (cancelled and expired jobs neither run nor halt).
    rec, futures, _ = run_workload(jobs, workers, start_timeout=start_timeout, halt_on_error=True)
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


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=timed_workloads(max_jobs=30, failures=False, cancellations=False),
    threads=st.integers(min_value=2, max_value=4),
)
def test_concurrent_submitters(jobs: list[TimedJob], threads: int) -> None:
    # Several threads submit slices of the workload at once; the recorder's
    # admission lock makes its order the true admission order.
    rec = OrderRecorder()
    with checked_dispatcher(3) as d:
        futures: list[Future[Any]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def submit_slice(part: list[TimedJob]) -> None:
            barrier.wait(WAIT)
            for job in part:
                future = rec.submit(d, job.spec.keys, job.body())
                with lock:
                    futures.append(future)

        workers = [threading.Thread(target=submit_slice, args=(jobs[i::threads],)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        _, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        assert not not_done
    rec.check()
    assert len(rec.ran()) == len(jobs)
