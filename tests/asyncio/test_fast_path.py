"""``run`` on an idle key: the job starts at once, with no waiter, and keeps
every guarantee.

Such a job holds its key in the engine like any other, so what is admitted
behind it (``submit``, ``run``, ``exclusive``) waits for it in order; it
takes a concurrency slot; pause, halt, cancellation, start deadlines,
``current_job()``, metrics and ``aclose`` treat it as any job. Its Job
record is reused by later runs once it has run."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keyed_dispatch import AsyncKeyedDispatcher, DispatcherClosed, JobContext, KeyHalted, Retry, StartTimeout
from tests.asyncio_support import WAIT, Gate, run, until, within


async def _append(out: list[Any], item: Any) -> Any:
    out.append(item)
    return item


async def _hold_key(ad: AsyncKeyedDispatcher, key: str, gate: Gate) -> asyncio.Task[Any]:
    # A run() on the idle ``key`` that started at once and now waits at ``gate``.
    task = asyncio.create_task(ad.run(key, gate.job, "held"))
    await within(gate.entered.wait())
    stats = ad.stats()
    assert (stats.running, stats.pending, stats.workers) == (1, 0, 1)
    return task


def test_submit_run_and_exclusive_behind_a_run_that_started_at_once_keep_admission_order() -> None:
    async def body() -> None:
        out: list[Any] = []
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            held = await _hold_key(ad, "k", gate)
            first = await ad.submit("k", _append, out, 1)
            second = asyncio.create_task(ad.run("k", _append, out, 2))
            await until(lambda: ad.stats().pending == 2, "run() to queue behind")

            async def block() -> None:
                async with ad.exclusive(["k"]):
                    out.append(3)

            third = asyncio.create_task(block())
            await until(lambda: ad.stats().pending == 3, "exclusive() to queue behind")
            fourth = await ad.submit("k", _append, out, 4)
            assert out == []
            gate.release.set()
            assert await within(held) == "held"
            await within(asyncio.gather(first, second, third, fourth))
            assert out == [1, 2, 3, 4]
            stats = ad.stats()
            assert (stats.submitted, stats.completed, stats.active_shards) == (5, 5, 0)

    run(body)


def test_a_run_on_an_idle_key_waits_for_an_earlier_submit_of_that_key() -> None:
    async def body() -> None:
        out: list[Any] = []
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            earlier = await ad.submit("k", gate.job)
            await within(gate.entered.wait())
            later = asyncio.create_task(ad.run("k", _append, out, "later"))
            await until(lambda: ad.stats().pending == 1, "run() to queue")
            assert out == []
            gate.release.set()
            await within(earlier)
            assert await within(later) == "later"

    run(body)


def test_cancelling_the_caller_of_a_run_that_started_at_once_frees_its_key() -> None:
    async def body() -> None:
        out: list[Any] = []
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            held = await _hold_key(ad, "k", gate)
            after = await ad.submit("k", _append, out, "after")
            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            assert gate.exited.is_set()  # the job's coroutine saw the cancellation
            assert await within(after) == "after"
            assert await ad.run("k", _append, out, "again") == "again"
            stats = ad.stats()
            assert (stats.cancelled, stats.completed, stats.running, stats.workers) == (1, 2, 0, 0)
            assert stats.active_shards == 0
        assert out == ["after", "again"]

    run(body)


def test_pausing_a_key_during_a_run_that_started_at_once_holds_what_follows() -> None:
    async def body() -> None:
        out: list[Any] = []
        gate = Gate()
        async with AsyncKeyedDispatcher(8) as ad:
            held = await _hold_key(ad, "k", gate)
            assert ad.pause("k")
            behind = asyncio.create_task(ad.run("k", _append, out, "behind"))
            await until(lambda: ad.key_info("k").pending == 1, "run() to queue")
            # Another key runs on while "k" is paused.
            assert await ad.run("j", _append, out, "other key") == "other key"
            gate.release.set()
            assert await within(held) == "held"
            await until(lambda: ad.stats().running == 0, "the held job to retire")
            info = ad.key_info("k")
            assert (info.pending, info.running, info.paused) == (1, False, True)
            assert out == ["other key"]
            # A paused idle key does not start a run either.
            assert ad.pause("p")
            idle = asyncio.create_task(ad.run("p", _append, out, "paused idle"))
            await until(lambda: ad.key_info("p").pending == 1, "run() on a paused key to queue")
            assert ad.resume("k")
            assert ad.resume("p")
            assert await within(behind) == "behind"
            assert await within(idle) == "paused idle"
        assert out == ["other key", "behind", "paused idle"]

    run(body)


def test_a_failed_run_that_started_at_once_halts_its_key_and_fails_what_follows() -> None:
    async def body() -> None:
        error = ValueError("failed")
        gate = Gate()

        async def fail_after_gate() -> None:
            await gate.job()
            raise error

        async with AsyncKeyedDispatcher(8, halt_on_error=True) as ad:
            failing = asyncio.create_task(ad.run("k", fail_after_gate))
            await within(gate.entered.wait())
            behind = asyncio.create_task(ad.run("k", _append, [], "behind"))
            await until(lambda: ad.stats().pending == 1, "run() to queue")
            gate.release.set()
            with pytest.raises(ValueError, match="failed"):
                await failing
            with pytest.raises(KeyHalted) as info:
                await behind
            assert info.value.__cause__ is error
            with pytest.raises(KeyHalted):
                await ad.run("k", _append, [], "later")
            # Other keys are not halted (and run while a halt is in force).
            assert await ad.run("j", _append, [], "other") == "other"
            assert ad.resume("k")
            assert await ad.run("k", _append, [], "resumed") == "resumed"
            stats = ad.stats()
            assert (stats.failed, stats.completed, stats.halted_keys) == (3, 2, 0)

    run(body)


def test_runs_that_start_at_once_take_concurrency_slots() -> None:
    async def body() -> None:
        gates = {key: Gate() for key in "abc"}
        async with AsyncKeyedDispatcher(2) as ad:
            tasks = {key: asyncio.create_task(ad.run(key, gates[key].job, key)) for key in "abc"}
            await within(gates["a"].entered.wait())
            await within(gates["b"].entered.wait())
            await until(lambda: ad.stats().pending == 1, "the third run() to wait for a slot")
            assert not gates["c"].entered.is_set()
            assert ad.stats().workers == 2
            gates["a"].release.set()
            assert await within(tasks["a"]) == "a"
            await within(gates["c"].entered.wait())
            assert ad.stats().workers == 2
            gates["b"].release.set()
            gates["c"].release.set()
            assert list(await within(asyncio.gather(tasks["b"], tasks["c"]))) == ["b", "c"]
            assert ad.stats().workers == 0

    run(body)


def test_current_job_and_a_nested_run_inside_a_run_that_started_at_once() -> None:
    async def body() -> None:
        seen: list[JobContext | None] = []
        async with AsyncKeyedDispatcher(8) as ad:

            async def job() -> None:
                seen.append(ad.current_job())
                with pytest.raises(RuntimeError, match="could deadlock"):
                    await ad.run("other", _append, [], "nested")

            await ad.run("k", job)
            await ad.run("k", job)  # reuses the first run's Job record
            assert ad.current_job() is None
        first, second = seen
        assert first is not None
        assert second is not None
        assert (first.keys, first.attempt) == (("k",), 1)
        assert (second.keys, second.attempt) == (("k",), 1)
        assert first.job_id != second.job_id

    run(body)


def test_a_start_deadline_fails_a_run_queued_behind_a_run_that_started_at_once() -> None:
    async def body() -> None:
        gate = Gate()
        async with AsyncKeyedDispatcher(8, start_timeout=0.01) as ad:
            held = await _hold_key(ad, "k", gate)
            with pytest.raises(StartTimeout):
                await within(ad.run("k", _append, [], "late"))
            gate.release.set()
            assert await within(held) == "held"
            assert await ad.run("k", _append, [], "on time") == "on time"
            stats = ad.stats()
            assert (stats.timed_out, stats.completed, stats.active_shards) == (1, 2, 0)

    run(body)


def test_a_retried_job_in_backoff_holds_its_key_against_a_run() -> None:
    async def body() -> None:
        out: list[Any] = []
        attempts: list[int] = []

        async def flaky() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise ValueError("first attempt fails")
            out.append("retried")
            return "retried"

        async with AsyncKeyedDispatcher(8) as ad:
            retried = await ad.options(retry=Retry(attempts=2, backoff=0.01, jitter=0.0)).submit("k", flaky)
            await until(lambda: ad.stats().in_backoff == 1, "the first attempt to fail")
            assert await within(ad.run("k", _append, out, "run")) == "run"
            assert await within(retried) == "retried"
        assert out == ["retried", "run"]

    run(body)


def test_metrics_count_runs_that_start_at_once() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(8, metrics=True) as ad:
            for i in range(20):
                await ad.run(i % 3, _append, [], i)
            stats = ad.stats()
        assert stats.wait is not None
        assert stats.run is not None
        assert (stats.wait.count, stats.run.count, stats.completed, stats.submitted) == (20, 20, 20, 20)
        assert stats.wait.sum == 0.0

    run(body)


def test_a_run_that_started_at_once_logs_as_any_job(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(8, wait_warning=0) as ad:
            with caplog.at_level(logging.WARNING, logger="keyed_dispatch"):
                await ad.run("k", _append, [], 1)  # waited 0 s >= wait_warning
            with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
                await ad.run("k", _append, [], 2)
        records = [r for r in caplog.records if r.name == "keyed_dispatch"]
        assert [(r.levelname, r.getMessage()) for r in records] == [
            ("WARNING", "job for k waited 0.00s"),
            ("DEBUG", "started job for k (waited 0.00s)"),
            ("WARNING", "job for k waited 0.00s"),
        ]
        assert [r.job_seq for r in records] == [0, 1, 1]  # type: ignore[attr-defined]

    run(body)


def test_aclose_waits_for_a_run_that_started_at_once() -> None:
    async def body() -> None:
        gate = Gate()
        ad = AsyncKeyedDispatcher(8)
        held = await _hold_key(ad, "k", gate)
        closing = asyncio.create_task(ad.aclose())
        await until(lambda: ad.stats().closed, "aclose() to start")
        with pytest.raises(DispatcherClosed):
            await ad.run("j", _append, [], "refused")
        assert not closing.done()
        gate.release.set()
        assert await within(held) == "held"
        await within(closing)
        assert ad.stats().running == 0

    run(body)


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks are 3.12+")
def test_a_long_chain_of_jobs_that_end_in_their_first_step_does_not_nest() -> None:
    # With eager tasks, a submitted job that does not suspend ends inside the
    # create_task that started it, that is inside the end of the job before
    # it: the hand-off from one to the next must not nest a call per job.
    async def body() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        out: list[Any] = []
        gate = Gate()
        chain = 3000  # past the recursion limit, were each hand-off nested
        async with AsyncKeyedDispatcher(4) as ad:
            held = asyncio.create_task(ad.run("k", gate.job))
            await within(gate.entered.wait())
            futures = [await ad.submit("k", _append, out, i) for i in range(chain)]
            gate.release.set()
            await within(held)
            await within(asyncio.gather(*futures))
        assert out == list(range(chain))

    run(body, debug=False)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(["run", "submit"]), st.sampled_from("abc"), st.integers(0, 2)),
        min_size=1,
        max_size=40,
    ),
    tasks=st.integers(1, 4),
    max_concurrency=st.integers(1, 3),
)
def test_runs_and_submits_mixed_on_few_keys_keep_each_tasks_order(
    plan: list[tuple[str, str, int]], tasks: int, max_concurrency: int
) -> None:
    # Task i takes steps i, i + tasks, ... one after the other: a run() is
    # awaited, a submit() is admitted and its future kept. Each key's jobs
    # must run one at a time, each task's jobs of a key in its program order,
    # and never more than max_concurrency at once.
    async def body() -> None:
        ad = AsyncKeyedDispatcher(max_concurrency)
        running: dict[str, int] = dict.fromkeys("abc", 0)
        started: list[tuple[str, int, int]] = []
        busy = [0, 0]  # running now, most ever

        async def job(key: str, task: int, step: int, yields: int) -> None:
            running[key] += 1
            busy[0] += 1
            busy[1] = max(busy)
            assert running[key] == 1, f"two jobs of {key} overlap"
            started.append((key, task, step))
            for _ in range(yields):
                await asyncio.sleep(0)
            running[key] -= 1
            busy[0] -= 1

        async def worker(task: int) -> list[asyncio.Future[None]]:
            futures = []
            for step in range(task, len(plan), tasks):
                how, key, yields = plan[step]
                if how == "run":
                    await ad.run(key, job, key, task, step, yields)
                else:
                    futures.append(await ad.submit(key, job, key, task, step, yields))
            return futures

        kept = await within(asyncio.gather(*(worker(i) for i in range(tasks))))
        await within(asyncio.gather(*(future for futures in kept for future in futures)))
        await within(ad.aclose())
        assert busy[1] <= max_concurrency
        assert sorted(step for _, _, step in started) == list(range(len(plan)))
        for key in "abc":
            for task in range(tasks):
                steps = [step for k, t, step in started if k == key and t == task]
                assert steps == sorted(steps)
        stats = ad.stats()
        assert (stats.completed, stats.submitted, stats.active_shards) == (len(plan), len(plan), 0)

    run(body, debug=False)


# -- hand-offs: every way a job ends starts the next one ---------------------


async def _exclusive_append(ad: AsyncKeyedDispatcher, key: str, out: list[Any], item: Any) -> None:
    async with ad.exclusive([key], timeout=None):
        out.append(item)


def test_a_block_behind_a_run_whose_caller_was_cancelled_gets_its_turn_on_resume() -> None:
    # resume() makes the parked run() job runnable; the dispatch that takes
    # it finds its waiter cancelled (the caller's task has not yet taken the
    # step that learns of it) and retires it on the spot. The key's next job
    # is the block: it must be granted then, as nothing else would wake it.
    async def body() -> None:
        out: list[Any] = []
        async with AsyncKeyedDispatcher(8) as ad:
            assert ad.pause("k")
            cancelled = asyncio.create_task(ad.run("k", _append, out, "run"))
            await until(lambda: ad.key_info("k").pending == 1, "run() to queue on the paused key")
            block = asyncio.create_task(_exclusive_append(ad, "k", out, "block"))
            await until(lambda: ad.key_info("k").pending == 2, "exclusive() to queue behind it")
            cancelled.cancel()
            assert ad.resume("k")
            await within(block)
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            stats = ad.stats()
            assert (stats.cancelled, stats.completed, stats.active_shards) == (1, 1, 0)
        assert out == ["block"]

    run(body)


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks are 3.12+")
def test_a_block_behind_an_eager_job_that_ends_in_its_first_step_gets_its_turn() -> None:
    # The submitted job's task runs its first step inside the dispatch that
    # starts it, and the job ends there: the block behind it becomes
    # runnable inside that dispatch, after its blocks were granted.
    async def body() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        out: list[Any] = []
        async with AsyncKeyedDispatcher(8) as ad:
            assert ad.pause("k")
            first = await ad.submit("k", _append, out, "submit")
            block = asyncio.create_task(_exclusive_append(ad, "k", out, "block"))
            await until(lambda: ad.key_info("k").pending == 2, "exclusive() to queue behind it")
            assert ad.resume("k")
            await within(block)
            assert await within(first) == "submit"
        assert out == ["submit", "block"]

    run(body)


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks are 3.12+")
def test_an_eager_job_that_ends_in_its_first_step_leaves_no_task_behind() -> None:
    async def body() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        tasks: list[weakref.ref[asyncio.Task[Any]]] = []

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(weakref.ref(task))

        async with AsyncKeyedDispatcher(8) as ad:
            futures = [await ad.submit(i, job) for i in range(10)]
            await within(asyncio.gather(*futures))
            del futures
            gc.collect()
            assert len(tasks) == 10
            assert [ref() for ref in tasks] == [None] * 10, "the dispatcher keeps tasks that ended"

    run(body)


# One step of the property below: how the job is called (or "pause": its
# first key is paused for that many loop trips, then resumed), its keys
# (indexes into "abc"), loop trips it takes, and after how many loop trips
# its awaiting task is cancelled (None: never).
_Step = tuple[str, tuple[int, ...], int, int | None]

_steps = st.tuples(
    st.sampled_from(["run", "run_multi", "submit", "exclusive", "pause"]),
    st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True).map(tuple),
    st.integers(0, 2),
    st.none() | st.integers(0, 5),
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A lost wake-up random plans rarely reach: the eager job ends inside the
# dispatch that resume() starts, and the block behind it must be granted.
@example(
    plan=[("pause", (0,), 1, None), ("submit", (0,), 0, None), ("exclusive", (0,), 0, None)],
    tasks=1,
    max_concurrency=1,
    max_pending=None,
    eager=hasattr(asyncio, "eager_task_factory"),
)
@given(
    plan=st.lists(_steps, min_size=1, max_size=30),
    tasks=st.integers(1, 4),
    max_concurrency=st.integers(1, 3),
    max_pending=st.none() | st.integers(1, 4),
    eager=st.booleans() if hasattr(asyncio, "eager_task_factory") else st.just(False),
)
def test_calls_cancelled_at_any_point_leave_every_other_call_live_and_ordered(
    plan: list[_Step], tasks: int, max_concurrency: int, max_pending: int | None, eager: bool
) -> None:
    # Task i takes steps i, i + tasks, ... one after the other, each call in
    # a task of its own that may be cancelled after some loop trips: before
    # its admission, while it waits for room or for its turn, while it runs,
    # or after it ended. A run*/exclusive call is awaited before the next
    # step; a submit is admitted, then its future awaited by the call's task.
    # A pause holds a key for some loop trips (resume then starts what it
    # held). Every call not cancelled must complete (a lost wake-up shows as
    # a call still pending at the deadline); jobs sharing a key never
    # overlap and start in admission order; no more than max_concurrency
    # jobs run.
    async def body() -> None:
        if eager:
            asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        ad = AsyncKeyedDispatcher(max_concurrency, max_pending=max_pending)
        running: dict[str, int] = dict.fromkeys("abc", 0)
        busy = [0, 0]  # jobs (not blocks) running now, most ever
        # (step, admission number, keys), in the order the jobs started.
        started: list[tuple[int, int, tuple[str, ...]]] = []

        def enter(step: int, keys: tuple[str, ...], block: bool) -> None:
            for key in keys:
                running[key] += 1
                assert running[key] == 1, f"two jobs of {key} overlap"
            if not block:
                busy[0] += 1
                busy[1] = max(busy)
            context = ad.current_job()
            assert context is not None
            started.append((step, int(context.job_id.rsplit("-", 1)[1]), keys))

        def leave(keys: tuple[str, ...], block: bool) -> None:
            for key in keys:
                running[key] -= 1
            if not block:
                busy[0] -= 1

        async def job(step: int, keys: tuple[str, ...], yields: int) -> int:
            enter(step, keys, block=False)
            try:
                for _ in range(yields):
                    await asyncio.sleep(0)
            finally:
                leave(keys, block=False)
            return step

        async def call(step: int, how: str, keys: tuple[str, ...], yields: int) -> int:
            if how == "run":
                return await ad.run(keys[0], job, step, keys[:1], yields)
            if how == "run_multi":
                return await ad.run_multi(keys, job, step, keys, yields)
            if how == "submit":
                return await (await ad.submit(keys[0], job, step, keys[:1], yields))
            async with ad.exclusive(keys, timeout=None):
                enter(step, keys, block=True)
                try:
                    for _ in range(yields):
                        await asyncio.sleep(0)
                finally:
                    leave(keys, block=True)
            return step

        async def cancel_later(target: asyncio.Task[int], trips: int) -> None:
            for _ in range(trips):
                await asyncio.sleep(0)
            target.cancel()

        async def pause_for(key: str, trips: int) -> None:
            ad.pause(key)
            for _ in range(trips):
                await asyncio.sleep(0)
            ad.resume(key)

        calls: dict[int, asyncio.Task[int]] = {}
        cancelled: set[int] = set()
        helpers: list[asyncio.Task[None]] = []

        async def worker(task: int) -> None:
            for step in range(task, len(plan), tasks):
                how, indexes, yields, cancel_after = plan[step]
                keys = tuple("abc"[i] for i in indexes)
                if how == "pause":
                    helpers.append(asyncio.create_task(pause_for(keys[0], yields + 1)))
                    continue
                calls[step] = child = asyncio.create_task(call(step, how, keys, yields))
                if cancel_after is not None:
                    cancelled.add(step)
                    helpers.append(asyncio.create_task(cancel_later(child, cancel_after)))
                if how != "submit":
                    await asyncio.wait({child})

        workers = [asyncio.create_task(worker(i)) for i in range(tasks)]
        _, stuck = await asyncio.wait(workers, timeout=WAIT)
        if not stuck:
            await asyncio.wait([*helpers, *calls.values()], timeout=WAIT)
        pending = sorted(step for step, child in calls.items() if not child.done())
        for child in [*workers, *helpers, *calls.values()]:
            child.cancel()  # only what a failure left pending
        assert not stuck, f"a task's call never completed: {ad.stats()}"
        assert not pending, f"calls {pending} never completed: {ad.stats()}"
        await within(ad.aclose())

        for step, child in calls.items():
            if child.cancelled():
                assert step in cancelled
            else:
                assert child.result() == step
        ran = [step for step, _, _ in started]
        assert len(ran) == len(set(ran)), "a job started twice"
        assert set(calls) - cancelled <= set(ran)
        assert busy[1] <= max_concurrency
        for key in "abc":
            order = [seq for _, seq, keys in started if key in keys]
            assert order == sorted(order), f"the jobs of {key} started out of admission order"
        stats = ad.stats()
        assert stats.submitted == stats.completed + stats.cancelled
        assert stats.completed >= len(set(calls) - cancelled)
        assert (stats.pending, stats.running, stats.workers, stats.active_shards) == (0, 0, 0, 0)

    run(body, debug=False)
