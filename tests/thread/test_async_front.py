"""KeyedDispatcher from async code: submit_async, submit_multi_async, run_async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import KeyedDispatcher, SubmitTimeout
from keyed_dispatch.testing import JobSpec, OrderRecorder, workloads
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
