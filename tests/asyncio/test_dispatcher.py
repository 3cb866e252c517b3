"""AsyncKeyedDispatcher: what is specific to the event loop, point by point.

Inline jobs (``run``/``run_multi``), cancellation of running jobs and of
waiting callers, loop and thread confinement, ``submit_threadsafe``,
``aclose``. The semantics both runners share are in tests/contract."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from typing import Any

import pytest

from keyed_dispatch import (
    AsyncKeyedDispatcher,
    DispatcherClosed,
    DispatcherConfig,
    KeyHalted,
    StartTimeout,
    webhook_key,
)
from tests.asyncio_support import Gate, run, until, within


async def _append(out: list[Any], item: Any) -> Any:
    await asyncio.sleep(0)
    out.append(item)
    return item


# -- 1. order and exclusion ----------------------------------------------------


def test_run_jobs_of_one_key_from_many_tasks_start_in_admission_order() -> None:
    async def body() -> None:
        out: list[int] = []
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            first = asyncio.create_task(ad.run("k", gate.job))
            await within(gate.entered.wait())
            # Each task is admitted when it first runs, in creation order.
            tasks = [asyncio.create_task(ad.run("k", _append, out, i)) for i in range(20)]
            await until(lambda: ad.stats().pending == 20, "20 queued run() calls")
            assert out == []
            gate.release.set()
            assert await within(asyncio.gather(*tasks)) == list(range(20))
            await first
        assert out == list(range(20))

    run(body)


# -- 2. parallel across keys, work-conserving up to max_concurrency -----------


def test_max_concurrency_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYED_DISPATCH_MAX_WORKERS", raising=False)
    assert AsyncKeyedDispatcher().stats().max_workers == 100
    assert AsyncKeyedDispatcher(7).stats().max_workers == 7
    monkeypatch.setenv("KEYED_DISPATCH_MAX_WORKERS", "12")
    monkeypatch.setenv("KEYED_DISPATCH_MAX_SHARDS", "34")
    ad = AsyncKeyedDispatcher()
    assert (ad.stats().max_workers, ad.stats().max_shards) == (12, 34)
    config = DispatcherConfig(max_workers=3, max_shards=5, submit_timeout=1.0)
    ad = AsyncKeyedDispatcher(config=config, max_shards=6)
    assert (ad.config.max_workers, ad.config.max_shards, ad.config.submit_timeout) == (3, 6, 1.0)


# -- 3. multi-key jobs ------------------------------------------------------------


def test_run_multi_from_many_tasks_in_any_key_order_does_not_deadlock() -> None:
    async def body() -> None:
        out: list[int] = []
        orders = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("a", "b", "c"), ("c", "b")]
        async with AsyncKeyedDispatcher(3) as ad:
            calls = [ad.run_multi(keys, _append, out, i) for i, keys in enumerate(orders * 5)]
            assert await within(asyncio.gather(*calls)) == list(range(30))
        assert sorted(out) == list(range(30))

    run(body)


# -- 5. backpressure -----------------------------------------------------------------


def test_max_pending_makes_submit_await_room_without_blocking_the_loop() -> None:
    async def body() -> None:
        gate = Gate()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with AsyncKeyedDispatcher(8, max_pending=1, submit_timeout=math.inf) as ad:
            await ad.submit("k", gate.job)
            await within(gate.entered.wait())
            await ad.submit("k", _append, [], 1)  # pending: 1, the limit
            waiting = asyncio.create_task(ad.submit("k", _append, [], 2))
            tick_task = asyncio.create_task(ticker())
            await until(lambda: ticks > 10, "the loop to keep running while submit waits")
            assert not waiting.done()
            gate.release.set()
            assert await within(await within(waiting)) == 2
            tick_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await tick_task

    run(body)


def test_cancelling_the_task_awaiting_admission_leaves_no_trace() -> None:
    async def body() -> None:
        gate = Gate()
        ran = asyncio.Event()

        async def must_not_run() -> None:
            ran.set()

        async with AsyncKeyedDispatcher(8, max_shards=1, submit_timeout=math.inf) as ad:
            await ad.submit("a", gate.job)
            for call in (
                lambda: ad.submit("b", must_not_run),
                lambda: ad.run("b", must_not_run),
                lambda: ad.exclusive(["b"]).__aenter__(),
            ):
                waiting = asyncio.create_task(call())
                await until(lambda: len(ad._room_waiters) == 1, "the submit to wait for room")
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                stats = ad.stats()
                assert (stats.submitted, stats.pending, stats.active_shards) == (1, 0, 1)
                assert ad._room_waiters == {}
            gate.release.set()
        assert not ran.is_set()
        assert ad.stats().submitted == 1

    run(body)


# -- 6. start deadline ------------------------------------------------------------------


def test_run_fails_with_start_timeout_on_time_while_its_key_is_still_busy() -> None:
    async def body() -> None:
        gate = Gate()
        ran = asyncio.Event()

        async def stale() -> None:
            ran.set()

        async with AsyncKeyedDispatcher(8, start_timeout=0.05) as ad:
            loop = asyncio.get_running_loop()
            first = await ad.submit("k", gate.job, "first")
            admitted = loop.time()
            with pytest.raises(StartTimeout):
                await within(ad.run("k", stale))
            assert loop.time() - admitted >= 0.05
            # It failed while the first job still held the key.
            assert not first.done()
            assert ad.stats().timed_out == 1
            gate.release.set()
            assert await within(first) == "first"
            # A run() on a free key starts at once: it cannot time out.
            assert await ad.run("k", _append, [], 9) == 9
            assert ad.stats().timed_out == 1
        assert not ran.is_set()

    run(body)


# -- 7. cancellation ----------------------------------------------------------------------


def test_cancelling_a_running_job_cancels_its_task_and_the_key_waits_for_the_unwinding() -> None:
    async def body() -> None:
        entered, unwinding, finish_unwinding = asyncio.Event(), asyncio.Event(), asyncio.Event()
        out: list[str] = []

        async def long_job() -> None:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                unwinding.set()
                await finish_unwinding.wait()
                out.append("unwound")
                raise

        async with AsyncKeyedDispatcher(8) as ad:
            running = await ad.submit("k", long_job)
            nxt = await ad.submit("k", _append, out, "next")
            await within(entered.wait())
            assert running.cancel()
            await within(unwinding.wait())
            assert ad.stats().running == 1
            assert ad.stats().pending == 1
            finish_unwinding.set()
            assert await within(nxt) == "next"
            assert ad.stats().cancelled == 1
        assert out == ["unwound", "next"]
        assert running.cancelled()

    run(body)


def test_cancelling_the_caller_of_run_cancels_the_job_queued_or_running() -> None:
    async def body() -> None:
        gate = Gate()
        ran = asyncio.Event()
        entered = asyncio.Event()

        async def must_not_run() -> None:
            ran.set()

        async def slow() -> None:
            entered.set()
            await asyncio.Event().wait()

        async with AsyncKeyedDispatcher(8) as ad:
            holder = asyncio.create_task(ad.run("k", gate.job))
            await within(gate.entered.wait())
            queued = asyncio.create_task(ad.run("k", must_not_run))
            await until(lambda: ad.stats().pending == 1, "run() to queue")
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert ad.stats().pending == 0
            gate.release.set()
            await within(holder)
            running = asyncio.create_task(ad.run("k", slow))
            await within(entered.wait())
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            stats = ad.stats()
            assert (stats.running, stats.workers, stats.active_shards, stats.cancelled) == (0, 0, 0, 2)
        assert not ran.is_set()

    run(body)


def test_a_caller_cancelled_right_after_its_grant_gives_the_turn_back() -> None:
    async def body() -> None:
        gate = Gate()
        ran = asyncio.Event()
        seen: list[int] = []

        async def must_not_run() -> None:
            ran.set()

        async with AsyncKeyedDispatcher(8) as ad:

            async def holder() -> None:
                await ad.run("k", gate.job)
                # The end of that run() granted the turn to `queued`, in this
                # very step: `queued` has not resumed yet. Cancel it now.
                seen.append(ad.stats().running)
                queued.cancel()

            holding = asyncio.create_task(holder())
            await within(gate.entered.wait())
            queued = asyncio.create_task(ad.run("k", must_not_run))
            await until(lambda: ad.stats().pending == 1, "run() to queue")
            gate.release.set()
            await within(holding)
            with pytest.raises(asyncio.CancelledError):
                await queued
            stats = ad.stats()
            assert (stats.running, stats.workers, stats.cancelled, stats.completed) == (0, 0, 1, 1)
        assert seen == [1]
        assert not ran.is_set()

    run(body)


# -- 8. errors, halt and resume ---------------------------------------------------------


def test_run_raises_the_jobs_exception_and_the_key_continues() -> None:
    async def body() -> None:
        async def boom() -> None:
            raise ValueError("boom")

        async with AsyncKeyedDispatcher(8) as ad:
            with pytest.raises(ValueError, match="boom"):
                await ad.run("k", boom)
            assert await ad.run("k", _append, [], "after") == "after"
            stats = ad.stats()
            assert (stats.failed, stats.completed) == (1, 1)

    # run() checks that no "exception was never retrieved" was reported.
    run(body)


def test_run_on_a_halted_key_raises_key_halted_until_resume() -> None:
    async def body() -> None:
        error = ValueError("cancel failed")

        async def boom() -> None:
            raise error

        async with AsyncKeyedDispatcher(8, halt_on_error=True) as ad:
            with pytest.raises(ValueError, match="cancel failed"):
                await ad.run("k", boom)
            assert ad.halted_keys() == frozenset({"k"})
            with pytest.raises(KeyHalted) as info:
                await ad.run("k", _append, [], "run")
            assert info.value.__cause__ is error
            with pytest.raises(KeyHalted):
                await ad.run_multi(["j", "k"], _append, [], "run")
            assert ad.resume("k")
            assert await ad.run("k", _append, [], "again") == "again"
            stats = ad.stats()
            assert (stats.halted_keys, stats.failed, stats.completed) == (0, 3, 1)

    run(body)


# -- 9. exclusive ------------------------------------------------------------------------


def test_exclusive_or_run_inside_a_held_key_raises_instead_of_deadlocking() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(8) as ad:

            async def nested_block() -> None:
                async with ad.exclusive(["other"]):
                    pass

            async def nested_run() -> None:
                await ad.run("other", _append, [], 1)

            with pytest.raises(RuntimeError, match="could deadlock"):
                await ad.run("k", nested_block)
            with pytest.raises(RuntimeError, match="could deadlock"):
                await within(await ad.submit("k", nested_run))
            async with ad.exclusive(["k"]):
                with pytest.raises(RuntimeError, match="could deadlock"):
                    await ad.run("k", _append, [], 1)
                # A task started inside holds nothing.
                assert await within(asyncio.create_task(ad.run("j", _append, [], 2))) == 2
            assert ad.stats().running == 0

    run(body)


def test_a_cancelled_exclusive_block_does_not_fail_or_halt() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(8, halt_on_error=True) as ad:
            block = ad.exclusive(["k"])
            await block.__aenter__()
            with pytest.raises(RuntimeError, match="already entered"):
                await block.__aenter__()
            await block.__aexit__(asyncio.CancelledError, asyncio.CancelledError(), None)
            assert ad.halted_keys() == frozenset()
            stats = ad.stats()
            assert (stats.cancelled, stats.failed, stats.running) == (1, 0, 0)

    run(body)


# -- 11. bad input ------------------------------------------------------------------------


def test_bad_input_to_run_is_refused_at_the_call() -> None:
    # The checks shared with submit are in tests/contract/test_bad_input.py.
    async def body() -> None:
        async with AsyncKeyedDispatcher(2) as ad:
            unhashable: Any = ["list"]
            with pytest.raises(TypeError, match="unhashable list"):
                await ad.run(unhashable, _append, [], 1)
            not_callable: Any = 42
            with pytest.raises(TypeError, match="callable"):
                await ad.run("k", not_callable)
            with pytest.raises(TypeError, match="callable"):
                await ad.run_multi(["k"], not_callable)
            with pytest.raises(ValueError, match="at least one key"):
                await ad.run_multi([], _append, [], 1)
            # A plain function is not a coroutine function: its job fails.
            not_a_coroutine_function: Any = lambda: 1  # noqa: E731
            with pytest.raises(TypeError):
                await ad.run("k", not_a_coroutine_function)
            assert ad.stats().failed == 1

    run(body)


# -- 12. logging ---------------------------------------------------------------------------


def test_run_logs_its_start_like_submit(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        key = webhook_key(1, "BTC/USDT")
        async with AsyncKeyedDispatcher(2, wait_warning=0) as ad:
            with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
                await ad.run(key, _append, [], 2)
                await ad.run_multi([key, "x"], _append, [], 2)
        messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "keyed_dispatch"]
        starts = [m for level, m in messages if level == "DEBUG"]
        warnings = [m for level, m in messages if level == "WARNING"]
        assert len(starts) == 2
        assert starts[0].startswith("started job for strategy_1_symbol_BTC/USDT (waited 0.")
        assert starts[1].startswith("started job for strategy_1_symbol_BTC/USDT+x (waited ")
        assert len(warnings) == 2
        assert warnings[0].startswith("job for strategy_1_symbol_BTC/USDT waited 0.")

    run(body)


# -- 13. context, loop binding, threads ---------------------------------------------------


def test_a_submitted_job_runs_in_the_submitters_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

    async def body() -> None:
        async def read() -> str:
            return request_id.get()

        async with AsyncKeyedDispatcher(2) as ad:
            gate = Gate()
            await ad.submit("k", gate.job)
            request_id.set("r1")
            first = await ad.submit("k", read)
            request_id.set("r2")
            second = await ad.submit("k", read)
            third = ad.run("k", read)
            gate.release.set()
            assert list(await within(asyncio.gather(first, second, third))) == ["r1", "r2", "r2"]

    run(body)


def test_the_dispatcher_binds_to_its_first_loop() -> None:
    ad = AsyncKeyedDispatcher(2)
    with pytest.raises(RuntimeError, match="not bound to an event loop yet"):
        ad.submit_threadsafe("k", _append, [], 1)

    async def first() -> None:
        await ad.run("k", _append, [], 1)

    async def second() -> None:
        with pytest.raises(RuntimeError, match="bound to event loop"):
            await ad.submit("k", _append, [], 2)
        with pytest.raises(RuntimeError, match="bound to event loop"):
            await ad.run("k", _append, [], 2)
        with pytest.raises(RuntimeError, match="bound to event loop"):
            await ad.aclose()
        with pytest.raises(RuntimeError, match="bound to event loop"):
            async with ad:
                pass

    run(first)
    run(second)
    coro = ad.run("k", _append, [], 3)
    with pytest.raises(RuntimeError, match="must be used from a coroutine"):
        coro.send(None)
    coro.close()


def test_other_threads_get_a_clear_error_and_submit_threadsafe_works() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(2) as ad:
            gate = Gate()
            await ad.submit("k", gate.job)

            def from_thread() -> list[Any]:
                errors: list[Any] = []
                for call in (ad.stats, ad.halted_keys, lambda: ad.resume("k")):
                    with pytest.raises(RuntimeError) as info:
                        call()
                    errors.append(str(info.value))
                future = ad.submit_threadsafe("k", _append, [], "threadsafe")
                return [errors, future]

            errors, future = await asyncio.to_thread(from_thread)
            assert len(errors) == 3
            assert all("confined to the thread of its event loop" in e for e in errors)
            gate.release.set()
            assert await within(asyncio.wrap_future(future)) == "threadsafe"
            # Cancelling the concurrent future cancels the job.
            blocker = Gate()
            await ad.submit("k", blocker.job)
            doomed = ad.submit_threadsafe("k", _append, [], "doomed")
            await until(lambda: ad.stats().pending == 1, "the threadsafe job to queue")
            doomed.cancel()
            await until(lambda: ad.stats().pending == 0, "the cancel to retire the job")
            blocker.release.set()
        with pytest.raises(DispatcherClosed):
            ad.submit_threadsafe("k", _append, [], 1)

    run(body)


# -- 14. shutdown -------------------------------------------------------------------------


def test_aclose_refuses_run_and_submit_threadsafe_while_it_drains() -> None:
    async def body() -> None:
        out: list[int] = []
        ad = AsyncKeyedDispatcher(2)
        gate = Gate()
        await ad.submit("k", gate.job)
        queued = asyncio.create_task(ad.run("k", _append, out, 1))
        await until(lambda: ad.stats().pending == 1, "run() to queue")
        closing = asyncio.create_task(ad.aclose())
        await until(lambda: ad.stats().closed, "aclose to begin")
        with pytest.raises(DispatcherClosed):
            await ad.run("k", _append, out, 99)
        with pytest.raises(DispatcherClosed):
            ad.submit_threadsafe("k", _append, out, 99)
        assert not closing.done()
        gate.release.set()
        await within(closing)
        assert queued.result() == 1
        assert out == [1]
        await ad.aclose()  # idempotent
        with pytest.raises(DispatcherClosed):
            await ad.run("k", _append, out, 99)

    run(body)


def test_aclose_cancel_pending_cancels_what_has_not_started() -> None:
    async def body() -> None:
        ad = AsyncKeyedDispatcher(2, max_shards=1, submit_timeout=math.inf)
        gate = Gate()
        running = await ad.submit("k", gate.job, "ran")
        queued = await ad.submit("k", _append, [], 1)
        queued_run = asyncio.create_task(ad.run("k", _append, [], 2))
        queued_block = asyncio.create_task(ad.exclusive(["k"]).__aenter__())
        waiting_for_room = asyncio.create_task(ad.submit("other", _append, [], 3))
        await until(lambda: ad.stats().pending == 3 and len(ad._room_waiters) == 1, "everything to queue")
        closing = asyncio.create_task(ad.aclose(cancel_pending=True))
        with pytest.raises(DispatcherClosed):
            await within(queued_run)
        with pytest.raises(DispatcherClosed):
            await within(queued_block)
        with pytest.raises(DispatcherClosed):
            await within(waiting_for_room)
        assert queued.cancelled()
        assert not closing.done()
        gate.release.set()
        await within(closing)
        assert running.result() == "ran"
        stats = ad.stats()
        assert (stats.cancelled, stats.completed, stats.pending, stats.active_shards) == (3, 1, 0, 0)

    run(body)


def test_aclose_from_inside_a_job_raises() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(2) as ad:

            async def close_me() -> None:
                await ad.aclose()

            with pytest.raises(RuntimeError, match="wait for itself"):
                await ad.run("k", close_me)
            with pytest.raises(RuntimeError, match="wait for itself"):
                await within(await ad.submit("k", close_me))

    run(body)


def test_cancelling_aclose_stops_the_wait_not_the_drain() -> None:
    async def body() -> None:
        ad = AsyncKeyedDispatcher(2)
        gate = Gate()
        job = await ad.submit("k", gate.job, "done")
        closing = asyncio.create_task(ad.aclose())
        await until(lambda: ad.stats().closed, "aclose to begin")
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        gate.release.set()
        assert await within(job) == "done"
        await within(ad.aclose())

    run(body)


def test_an_unused_dispatcher_closes_cleanly() -> None:
    async def body() -> None:
        ad = AsyncKeyedDispatcher()
        await ad.aclose()
        assert ad.stats().closed

    run(body)


# -- 15. edges ------------------------------------------------------------------------------


def test_a_waiter_cancelled_in_the_step_that_grants_it_never_runs() -> None:
    async def body() -> None:
        ran = asyncio.Event()
        release = asyncio.Event()
        waiters: list[asyncio.Task[Any]] = []

        async def must_not_run() -> None:
            ran.set()

        async def cancel_the_waiters_then_end() -> None:
            await release.wait()
            # The waiters' cancellation is still pending (their tasks have
            # not resumed) when this job's end grants them the key.
            for waiter in waiters:
                waiter.cancel()

        async with AsyncKeyedDispatcher(8) as ad:
            holder = asyncio.create_task(ad.run("k", cancel_the_waiters_then_end))
            waiters.append(asyncio.create_task(ad.run("k", must_not_run)))
            waiters.append(asyncio.create_task(ad.exclusive(["k"]).__aenter__()))
            await until(lambda: ad.stats().pending == 2, "two callers to queue")
            release.set()
            await within(holder)
            stats = ad.stats()
            assert (stats.cancelled, stats.pending, stats.running) == (2, 0, 0)
            for waiter in waiters:
                with pytest.raises(asyncio.CancelledError):
                    await waiter
        assert not ran.is_set()

    run(body)


def test_a_cancelled_exclusive_wait_gives_the_place_up() -> None:
    async def body() -> None:
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            await ad.submit("k", gate.job)
            entering = asyncio.create_task(ad.exclusive(["k"], timeout=None).__aenter__())
            await until(lambda: ad.stats().pending == 1, "the block to queue")
            entering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await entering
            assert ad.stats().pending == 0
            gate.release.set()
            async with ad.exclusive(["k"]):  # first use may be a block, too
                assert ad.stats().running == 1

    run(body)
    ad = AsyncKeyedDispatcher(2)

    async def first_use_is_a_block() -> None:
        async with ad.exclusive(["k"]):
            assert ad.stats().running == 1

    run(first_use_is_a_block)


def test_a_job_task_cancelled_by_someone_else_cancels_its_future() -> None:
    async def body() -> None:
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            future = await ad.submit("k", gate.job)
            await within(gate.entered.wait())
            (task,) = ad._tasks
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await within(future)
            assert ad.stats().cancelled == 1

    run(body)


def test_submit_threadsafe_bad_input_and_closed_loop() -> None:
    ad = AsyncKeyedDispatcher(2)

    async def use() -> None:
        await ad.run("k", _append, [], 0)  # binds the loop
        not_callable: Any = 42
        with pytest.raises(TypeError, match="callable"):
            ad.submit_threadsafe("k", not_callable)
        unhashable: Any = {}
        with pytest.raises(TypeError, match="unhashable"):
            ad.submit_threadsafe(unhashable, _append, [], 1)

    run(use)
    with pytest.raises(RuntimeError, match="closed"):
        ad.submit_threadsafe("k", _append, [], 1)


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks are 3.12+")
def test_an_eager_task_factory_keeps_the_guarantees() -> None:
    # With eager tasks, a job's first step runs inside create_task, that is
    # inside the dispatcher's own bookkeeping; it must not re-enter it.
    async def body() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        out: list[int] = []

        async def immediate(i: int) -> int:
            out.append(i)
            return i

        async with AsyncKeyedDispatcher(2) as ad:
            futures = [await ad.submit(i % 3, immediate, i) for i in range(30)]
            assert await within(asyncio.gather(*futures)) == list(range(30))
        assert sorted(out) == list(range(30))
        assert [i for i in out if i % 3 == 0] == list(range(0, 30, 3))

    run(body)


def test_a_job_cancelled_before_its_task_first_runs_never_runs() -> None:
    async def body() -> None:
        ran = asyncio.Event()

        async def must_not_run() -> None:
            ran.set()

        async with AsyncKeyedDispatcher(2) as ad:
            # A free key: the job is started at admission, its task created;
            # the task has not taken its first step when the cancel comes.
            future = await ad.submit("k", must_not_run)
            assert ad.stats().running == 1
            assert future.cancel()
            with pytest.raises(asyncio.CancelledError):
                await within(future)
            await until(lambda: ad.stats().running == 0, "the job to retire")
            assert ad.stats().cancelled == 1
        assert not ran.is_set()

    run(body)
