"""Property tests of the inline front (``run_multi`` from concurrent tasks),
checked by ``keyed_dispatch.testing.OrderRecorder``. Random submitted
workloads run against both runners in tests/contract/test_properties.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import AsyncKeyedDispatcher
from keyed_dispatch.testing import JobSpec, OrderRecorder, workloads
from tests.asyncio_support import run, within

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
