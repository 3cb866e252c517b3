"""keyed_dispatch.testing from coroutines: OrderRecorder.asubmit with both
dispatchers, and how the recorder judges coroutine jobs."""

from __future__ import annotations

import asyncio

import pytest

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher
from keyed_dispatch.testing import OrderRecorder
from tests.asyncio_support import run, within


def test_asubmit_records_the_admission_order_for_both_dispatchers() -> None:
    async def body() -> None:
        rec = OrderRecorder()

        async def job(i: int) -> int:
            await asyncio.sleep(0)
            return i

        async with AsyncKeyedDispatcher(3) as ad:
            futures = [await rec.asubmit(ad, [i % 3, "shared"], job, i) for i in range(10)]
            futures += [await rec.asubmit(ad, ["x"]) for _ in range(3)]
            assert await within(asyncio.gather(*futures)) == [*range(10), None, None, None]
        with KeyedDispatcher(3) as d:
            thread_futures = [await rec.asubmit(d, [i % 2], abs, -i) for i in range(10)]
            assert await within(asyncio.gather(*thread_futures)) == list(range(10))
        rec.check()
        assert [job.admitted for job in rec.jobs] == list(range(23))

    run(body)


def test_asubmit_records_a_refused_job_as_one_that_must_not_run() -> None:
    async def body() -> None:
        rec = OrderRecorder()
        ad = AsyncKeyedDispatcher(2)
        await ad.aclose()
        with pytest.raises(Exception, match="closed"):
            await rec.asubmit(ad, ["k"])
        assert rec.jobs[0].expect_run is False
        rec.check()

    run(body)


def test_the_recorder_catches_an_overlap_of_coroutine_jobs() -> None:
    # Without a dispatcher, two jobs of one key overlap: check() must say so.
    async def body() -> None:
        rec = OrderRecorder()
        gate = asyncio.Event()

        async def job() -> None:
            await gate.wait()

        first = rec.wrap(["k"], job)
        second = rec.wrap(["k"], job)
        rec.admitted(first)
        rec.admitted(second)
        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        await asyncio.sleep(0)
        gate.set()
        await within(asyncio.gather(*tasks))
        with pytest.raises(AssertionError, match="overlap on key 'k'"):
            rec.check()

    run(body)


def test_a_job_cancelled_while_running_is_declared_as_run() -> None:
    # asyncio can cancel a running job: its future is cancelled, yet the job
    # ran once. expect_from_future tells the two apart by whether the job
    # had started: a queued one must not have run, a running one ran once.
    async def body() -> None:
        rec = OrderRecorder()
        entered = asyncio.Event()

        async def long_job() -> None:
            entered.set()
            await asyncio.Event().wait()

        async with AsyncKeyedDispatcher(2) as ad:
            running_wrapped = rec.wrap(["k"], long_job)
            running = await rec.asubmit(ad, ["k"], running_wrapped)
            queued_wrapped = rec.wrap(["k"], long_job)
            queued = await rec.asubmit(ad, ["k"], queued_wrapped)
            await within(entered.wait())
            assert queued.cancel()
            rec.expect_from_future(queued_wrapped, queued)
            assert running.cancel()
            rec.expect_from_future(running_wrapped, running)
        rec.check()
        assert [job.expect_run for job in rec.jobs] == [True, False]
        # The queued job was declared as not run: a record saying it ran
        # is a violation.
        rec.jobs[1].starts.append(10**9)
        rec.jobs[1].ends.append(10**9 + 1)
        with pytest.raises(AssertionError, match="ran but must not have"):
            rec.check()

    run(body)
