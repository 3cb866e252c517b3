"""Property tests: random keyed workloads on the asyncio fronts, checked by
``keyed_dispatch.testing.OrderRecorder`` (same key: one at a time, in
admission order; every admitted job that was not cancelled, timed out or
halted runs exactly once; the others never run)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher, KeyHalted, StartTimeout
from keyed_dispatch.testing import JobSpec, OrderRecorder, workloads
from tests.asyncio_support import WAIT, run, within

_settings = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _coro_job(spec: JobSpec, yields: int) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        for _ in range(yields):
            await asyncio.sleep(0)
        if spec.fail:
            raise ValueError("job failed on purpose")

    return job


@pytest.mark.slow
@_settings
@given(
    specs=workloads(max_jobs=30),
    max_concurrency=st.integers(1, 4),
    yields=st.integers(0, 2),
    halt_on_error=st.booleans(),
    start_timeout=st.sampled_from([None, 0.002]),
)
def test_submitted_coroutine_jobs_keep_the_guarantees(
    specs: list[JobSpec], max_concurrency: int, yields: int, halt_on_error: bool, start_timeout: float | None
) -> None:
    async def body() -> None:
        rec = OrderRecorder()
        ad = AsyncKeyedDispatcher(
            max_concurrency, halt_on_error=halt_on_error, start_timeout=start_timeout, submit_timeout=math.inf
        )
        submitted: list[tuple[Any, asyncio.Future[None]]] = []
        for spec in specs:
            wrapped = rec.wrap(spec.keys, _coro_job(spec, yields))
            future = await rec.asubmit(ad, spec.keys, wrapped)
            if spec.cancel:
                # Nothing ran since the admission: the job cannot have started.
                assert future.cancel()
            submitted.append((wrapped, future))
        await within(asyncio.gather(*(f for _, f in submitted), return_exceptions=True))
        await within(ad.aclose())
        for wrapped, future in submitted:
            rec.expect_from_future(wrapped, future)
            if not future.cancelled() and isinstance(future.exception(), (StartTimeout, KeyHalted)):
                assert not wrapped.recorded.starts
        rec.check()
        stats = ad.stats()
        assert stats.submitted == len(specs)
        assert stats.completed + stats.failed + stats.cancelled + stats.timed_out == len(specs)
        assert (stats.pending, stats.running, stats.active_shards) == (0, 0, 0)

    run(body, debug=False)


@pytest.mark.slow
@_settings
@given(
    specs=workloads(max_jobs=30, cancellations=False),
    tasks=st.integers(1, 4),
    max_concurrency=st.integers(1, 3),
    yields=st.integers(0, 2),
)
def test_run_from_concurrent_tasks_keeps_the_guarantees(
    specs: list[JobSpec], tasks: int, max_concurrency: int, yields: int
) -> None:
    # Task i runs jobs i, i + tasks, ... one after the other with run_multi;
    # the tasks interleave. run() admits synchronously in its first step, so
    # recording the admission just before the call records the true order.
    async def body() -> None:
        rec = OrderRecorder()
        ad = AsyncKeyedDispatcher(max_concurrency)

        async def worker(mine: list[JobSpec]) -> None:
            for spec in mine:
                wrapped = rec.wrap(spec.keys, _coro_job(spec, yields))
                rec.admitted(wrapped)
                try:
                    await ad.run_multi(spec.keys, wrapped)
                except ValueError:
                    assert spec.fail

        await within(asyncio.gather(*(worker(specs[i::tasks]) for i in range(tasks))))
        await within(ad.aclose())
        rec.check()
        assert ad.stats().completed + ad.stats().failed == len(specs)

    run(body, debug=False)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads(max_jobs=20, cancellations=False), max_pending=st.sampled_from([None, 1, 3]))
def test_thread_dispatcher_submit_async_keeps_the_guarantees(
    specs: list[JobSpec], max_pending: int | None
) -> None:
    # The thread dispatcher driven from a coroutine: admission may have to
    # wait for room (max_pending) in a helper thread; the recorder's
    # asyncio lock keeps the recorded admission order true.
    def blocking_job(spec: JobSpec) -> Callable[[], None]:
        def job() -> None:
            time.sleep(0.0001)  # stands for the job's own work
            if spec.fail:
                raise ValueError("job failed on purpose")

        return job

    async def body() -> None:
        rec = OrderRecorder()
        with KeyedDispatcher(3, max_pending=max_pending, submit_timeout=WAIT) as d:
            submitted = []
            for spec in specs:
                wrapped = rec.wrap(spec.keys, blocking_job(spec))
                # No cancellations here: cancelling the asyncio wrapper of
                # a thread job may come after the job started (that is
                # tested deterministically in test_asyncio_thread_front).
                submitted.append((wrapped, await rec.asubmit(d, spec.keys, wrapped)))
            await within(asyncio.gather(*(f for _, f in submitted), return_exceptions=True))
        for wrapped, future in submitted:
            rec.expect_from_future(wrapped, future)
        rec.check()

    run(body, debug=False)
