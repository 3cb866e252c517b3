"""KeyedDispatcher from async code: submit_async, submit_multi_async,
run_async, and OrderRecorder.asubmit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher, SubmitTimeout
from keyed_dispatch.testing import OrderRecorder
from tests.asyncio_support import WAIT, run, until, within


def test_submit_async_returns_an_asyncio_future_of_the_result() -> None:
    async def body() -> None:
        with KeyedDispatcher(2) as d:
            future = await d.submit_async("k", pow, 2, 10)
            assert isinstance(future, asyncio.Future)
            assert await within(future) == 1024
            both = await d.submit_multi_async(["k", "j"], sorted, [3, 1, 2])
            assert await within(both) == [1, 2, 3]
            assert await d.run_async("k", divmod, 7, 2) == (3, 1)
            with pytest.raises(ZeroDivisionError):
                await d.run_async("k", divmod, 1, 0)
            # The executor view keeps working from the loop.
            loop = asyncio.get_running_loop()
            assert await within(loop.run_in_executor(d.executor("k"), abs, -5)) == 5
            with pytest.raises(TypeError, match="callable"):
                await d.submit_async("k", 42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="unhashable"):
                await d.submit_async([], abs, 1)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="at least one key"):
                await d.submit_multi_async([], abs, 1)

    run(body)


def test_same_key_jobs_submitted_from_a_coroutine_run_in_order() -> None:
    async def body() -> None:
        out: list[int] = []
        with KeyedDispatcher(4) as d:
            futures = [await d.submit_async("k", out.append, i) for i in range(100)]
            await within(asyncio.gather(*futures))
        assert out == list(range(100))

    run(body)


def test_admission_waiting_for_room_does_not_block_the_loop() -> None:
    async def body() -> None:
        release = threading.Event()
        out: list[str] = []
        with KeyedDispatcher(1, max_pending=1, submit_timeout=WAIT) as d:
            first = await d.submit_async("k", release.wait, WAIT)
            await until(lambda: d.stats().running == 1, "the first job to start")
            queued = await d.submit_async("k", out.append, "queued")
            waiting = asyncio.create_task(d.submit_async("k", out.append, "waited"))
            ticks = 0
            while ticks < 20:  # the loop runs while the admission waits
                ticks += 1
                await asyncio.sleep(0)
            assert not waiting.done()
            release.set()
            await within(asyncio.gather(first, queued, await within(waiting)))
        assert out == ["queued", "waited"]

    run(body)


def test_a_cancelled_waiting_submit_async_leaves_no_trace() -> None:
    async def body() -> None:
        release = threading.Event()
        ran = threading.Event()
        with KeyedDispatcher(1, max_pending=1, submit_timeout=WAIT) as d:
            first = await d.submit_async("k", release.wait, WAIT)
            await until(lambda: d.stats().running == 1, "the first job to start")
            queued = await d.submit_async("k", time.sleep, 0)
            waiting = asyncio.create_task(d.submit_async("other", ran.set))
            await until(lambda: d._room_waiters == 1, "the helper thread to wait for room")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # The helper thread sees the abort and gives up; nothing queued.
            await until(lambda: d._room_waiters == 0, "the helper thread to give up")
            stats = d.stats()
            assert (stats.submitted, stats.pending, stats.active_shards) == (2, 1, 1)
            release.set()
            await within(asyncio.gather(first, queued))
        assert not ran.is_set()
        assert d.stats().submitted == 2

    run(body)


def test_submit_async_times_out_like_submit() -> None:
    async def body() -> None:
        release = threading.Event()
        with KeyedDispatcher(1, max_pending=1, submit_timeout=0.02) as d:
            first = await d.submit_async("k", release.wait, WAIT)
            await until(lambda: d.stats().running == 1, "the first job to start")
            queued = await d.submit_async("k", abs, -1)
            with pytest.raises(SubmitTimeout):
                await within(d.submit_async("k", abs, -2))
            assert d.stats().submitted == 2
            release.set()
            assert await within(queued) == 1
            await within(first)

    run(body)


def test_cancelling_the_result_of_run_async_cancels_a_queued_job() -> None:
    async def body() -> None:
        release = threading.Event()
        ran = threading.Event()
        with KeyedDispatcher(1) as d:
            first = await d.submit_async("k", release.wait, WAIT)
            waiting = asyncio.create_task(d.run_async("k", ran.set))
            await until(lambda: d.stats().pending == 1, "run_async to queue its job")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert d.stats().cancelled == 1
            release.set()
            await within(first)
        assert not ran.is_set()

    run(body)


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
