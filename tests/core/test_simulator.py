"""keyed_dispatch.testing.SimulatedDispatcher: the engine's schedules, one choice at a time."""

from __future__ import annotations

import asyncio
import functools
import math
import re
import threading
import time
from collections.abc import Callable, Generator, Hashable, Sequence
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyed_dispatch import DispatcherClosed, KeyHalted, ShardsExhausted, StartTimeout, SubmitTimeout
from keyed_dispatch.testing import (
    JobSpec,
    OrderRecorder,
    SimulatedDispatcher,
    SimulatedJob,
    failing,
    hypothesis_chooser,
    workloads,
)
from tests.helpers import WAIT, checked_dispatcher
from tests.strategies import KEYS


def numbers(sim: SimulatedDispatcher) -> list[int]:
    """The job numbers of the steps taken, in order."""
    return [step.job.number for step in sim.schedule]


def last(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
    """A chooser that takes the youngest candidate."""
    return jobs[-1]


# -- the default schedule --------------------------------------------------------


def test_the_default_chooser_takes_the_oldest_runnable_job() -> None:
    sim = SimulatedDispatcher()
    ran: list[str] = []
    for name, keys in [("a1", ["a"]), ("b1", ["b"]), ("ab", ["a", "b"]), ("a2", ["a"]), ("c1", ["c"])]:
        sim.submit_multi(keys, ran.append, name)
    assert sim.run_until_idle() == 5
    assert ran == ["a1", "b1", "ab", "a2", "c1"]  # ab waits for a1 and b1; a2 waits for ab
    assert [str(step) for step in sim.schedule] == [
        "step 1: job #1 on key a (list.append) [among #1 #2 #5]",
        "step 2: job #2 on key b (list.append) [among #2 #5]",
        "step 3: job #3 on keys a+b (list.append) [among #3 #5]",
        "step 4: job #4 on key a (list.append) [among #4 #5]",
        "step 5: job #5 on key c (list.append) [among #5]",
    ]
    assert sim.step() is False
    assert sim.stats().completed == 5


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(workloads(("a", "b", "c"), max_jobs=30, failures=False, cancellations=False))
def test_the_default_schedule_is_the_one_of_a_one_worker_keyed_dispatcher(jobs: list[JobSpec]) -> None:
    # The real dispatcher starts its first job at once; a gate holds it
    # until every job is admitted, as the simulator admits them all before
    # its first step.
    gate = threading.Event()
    real: list[int] = []
    with checked_dispatcher(1) as dispatcher:
        dispatcher.submit("gate", gate.wait, WAIT)
        futures = [dispatcher.submit_multi(spec.keys, real.append, i) for i, spec in enumerate(jobs)]
        gate.set()
        for future in futures:
            future.result(WAIT)
    simulated: list[int] = []
    sim = SimulatedDispatcher()
    sim.submit("gate", lambda: None)
    for i, spec in enumerate(jobs):
        sim.submit_multi(spec.keys, simulated.append, i)
    sim.run_until_idle()
    assert simulated == real


# -- finding a bug that needs one cross-key order ----------------------------------


class Account:
    """The planted bug: two keys share an account balance.

    Deposits arrive on key ``A`` and withdrawals on key ``B``. The withdraw
    handler assumes that the deposits sent before it were applied, which
    the dispatcher guarantees only on one key: the second deposit may run
    after the withdrawal, in an order the default schedule never takes.
    """

    def __init__(self) -> None:
        self.balance = 0

    def deposit(self, amount: int) -> None:
        self.balance += amount

    def withdraw(self, amount: int) -> None:
        assert self.balance >= amount, f"overdrawn: {self.balance} < {amount}"
        self.balance -= amount

    def audit(self) -> None:
        assert self.balance >= 0


def send_webhooks(sim: SimulatedDispatcher, account: Account) -> list[Future[None]]:
    return [
        sim.submit("A", account.deposit, 10),  # 1
        sim.submit("B", account.audit),  # 2
        sim.submit("A", account.deposit, 5),  # 3
        sim.submit("B", account.withdraw, 15),  # 4
    ]


def test_the_default_order_hides_the_planted_bug() -> None:
    sim = SimulatedDispatcher()
    account = Account()
    send_webhooks(sim, account)
    sim.run_until_idle()
    assert account.balance == 0


def test_hypothesis_finds_the_order_that_breaks_the_handler_and_reports_it_shrunk() -> None:
    @settings(database=None, max_examples=200, deadline=None)
    @given(st.data())
    def handler_survives_every_order(data: st.DataObject) -> None:
        sim = SimulatedDispatcher(hypothesis_chooser(data))
        futures = send_webhooks(sim, Account())
        sim.run_until_idle()
        for future in futures:
            future.result(0)  # a handler's failure belongs to its future: raise it here

    with pytest.raises(AssertionError, match="overdrawn: 10 < 15") as caught:
        handler_survives_every_order()
    report = "\n".join(getattr(caught.value, "__notes__", []))
    # Shrunk towards the default order: it deviates only at step 3, where
    # the withdrawal overtakes the second deposit.
    assert "step 1: job #1 on key A (Account.deposit) [among #1 #2]" in report
    assert "step 2: job #2 on key B (Account.audit) [among #2 #3]" in report
    assert "step 3: job #4 on key B (Account.withdraw) [among #3 #4]" in report
    assert "step 4: job #3 on key A (Account.deposit) [among #3]" in report


# -- random workloads --------------------------------------------------------------


def run_workload(sim: SimulatedDispatcher, jobs: list[JobSpec]) -> tuple[OrderRecorder, list[int]]:
    """Submit ``jobs`` through a recorder, run them; return it and the start order (job ids)."""
    rec = OrderRecorder()
    for spec in jobs:
        future = rec.submit(sim, spec.keys, failing() if spec.fail else None)
        if spec.cancel:
            future.cancel()
    sim.run_until_idle()
    return rec, [job.job_id for job in rec.ran()]


@pytest.mark.slow
def test_every_explored_schedule_keeps_the_guarantees_and_some_leave_the_default_order() -> None:
    deviations = 0

    @settings(database=None, max_examples=40, deadline=None)
    @given(workloads(KEYS, max_jobs=15), st.booleans(), st.data())
    def explore(jobs: list[JobSpec], halt: bool, data: st.DataObject) -> None:
        nonlocal deviations
        _, default = run_workload(SimulatedDispatcher(halt_on_error=halt), jobs)
        sim = SimulatedDispatcher(hypothesis_chooser(data), halt_on_error=halt)
        rec, order = run_workload(sim, jobs)
        rec.check()
        assert sim.stats().pending == sim.stats().running == 0
        assert sorted(order) == sorted(default)  # the same jobs ran, maybe in another order
        deviations += order != default

    explore()
    assert deviations > 0, "no explored schedule left the default order"


# -- seeds and choosers ------------------------------------------------------------


def seeded_schedule(seed: int) -> list[str]:
    sim = SimulatedDispatcher(seed=seed)
    for i in range(12):
        sim.submit_multi([KEYS[i % 4], KEYS[i % 3]], lambda: None)
    sim.run_until_idle()
    return [str(step) for step in sim.schedule]


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert seeded_schedule(7) == seeded_schedule(7)
    assert len({tuple(seeded_schedule(seed)) for seed in range(8)}) > 1


def test_a_chooser_sees_the_candidates_in_the_default_order_and_picks_one() -> None:
    offered: list[list[int]] = []

    def youngest(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
        offered.append([job.number for job in jobs])
        return jobs[-1]

    sim = SimulatedDispatcher(youngest)
    ran: list[str] = []
    for key in "abc":
        sim.submit(key, ran.append, key)
    sim.run_until_idle()
    assert ran == ["c", "b", "a"]
    assert offered == [[1, 2, 3], [1, 2], [1]]


def test_a_job_describes_its_call() -> None:
    seen: list[SimulatedJob] = []

    def keep(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
        seen.extend(jobs)
        return jobs[0]

    sim = SimulatedDispatcher(keep)
    work = functools.partial(print, end="")
    sim.submit_multi(["k", "k", 2], work, "x", sep="")
    sim.run_until_idle()
    (job,) = seen
    assert (job.number, job.keys, job.fn, job.args, job.kwargs) == (1, ("k", 2), work, ("x",), {"sep": ""})
    assert job.name == repr(work)  # a partial has no __qualname__
    assert str(job) == f"job #1 on keys k+2 ({work!r})"


def test_a_chooser_must_return_one_of_the_candidates() -> None:
    sim = SimulatedDispatcher(lambda jobs: SimulatedJob(1, ("a",), print, (), {}))
    sim.submit("a", print)
    with pytest.raises(ValueError, match="not one of the jobs it was offered"):
        sim.step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chooser": last, "seed": 1}, "not both"),
        ({"chooser": 3}, "chooser must be callable, got int"),
        ({"halt_on_error": 1}, "halt_on_error must be a bool"),
        ({"max_shards": "many"}, "max_shards must be an int"),
    ],
)
def test_bad_settings_raise_type_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        SimulatedDispatcher(**kwargs)


def test_settings_do_not_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYED_DISPATCH_START_TIMEOUT", "3")
    assert SimulatedDispatcher().config.start_timeout is None
    assert SimulatedDispatcher(start_timeout=2).config.start_timeout == 2


# -- bad input ---------------------------------------------------------------------


def test_bad_input_raises_as_keyed_dispatcher_does() -> None:
    sim = SimulatedDispatcher()
    unhashable: Any = ["a"]
    not_callable: Any = 3
    with pytest.raises(TypeError, match="unhashable list"):
        sim.submit(unhashable, print)
    with pytest.raises(TypeError, match="unhashable list"):
        sim.submit_multi(["ok", unhashable], print)
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        sim.submit("a", not_callable)
    with pytest.raises(TypeError, match="fn must be callable, got NoneType"):
        sim.submit_multi(["a"], None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty"):
        sim.submit_multi([], print)
    with pytest.raises(TypeError, match="wrap it"):
        sim.submit_multi("ab", print)
    assert sim.stats().submitted == 0
    assert sim.step() is False


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf])
def test_advance_refuses_a_bad_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        SimulatedDispatcher().advance(seconds)


@pytest.mark.parametrize("seconds", ["1", True, None])
def test_advance_refuses_a_non_number(seconds: Any) -> None:
    with pytest.raises(TypeError, match="seconds must be a number"):
        SimulatedDispatcher().advance(seconds)


# -- the simulated clock and start deadlines ---------------------------------------


def test_a_start_deadline_fires_when_the_simulated_clock_passes_it() -> None:
    sim = SimulatedDispatcher(start_timeout=5)
    ran: list[str] = []
    late = sim.submit("a", ran.append, "late")
    sim.advance(4.5)
    assert not late.done()
    kept = sim.submit("a", ran.append, "kept")  # its deadline is 9.5
    sim.advance(0.5)
    assert sim.clock == 5.0
    with pytest.raises(StartTimeout, match=r"start timeout \(5s\)"):
        late.result(0)
    sim.run_until_idle()
    assert ran == ["kept"]
    assert kept.result(0) is None
    assert sim.stats().timed_out == 1


def test_a_deadline_fires_while_an_earlier_job_of_the_key_still_runs() -> None:
    sim = SimulatedDispatcher(start_timeout=1)
    ran: list[str] = []

    def slow() -> None:
        ran.append("slow")
        sim.advance(3)  # work that takes 3 simulated seconds

    sim.submit("a", slow)
    queued = sim.submit("a", ran.append, "queued")
    other = sim.submit("b", ran.append, "other")
    sim.run_until_idle()
    assert ran == ["slow"]
    assert isinstance(queued.exception(0), StartTimeout)
    assert isinstance(other.exception(0), StartTimeout)


def test_waits_are_simulated_time(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_real_clock() -> float:
        raise AssertionError("the simulator read the real clock")

    sim = SimulatedDispatcher(start_timeout=100, wait_warning=10)
    sim.submit("a", print, end="")
    with monkeypatch.context() as patched, caplog.at_level("WARNING", logger="keyed_dispatch"):
        patched.setattr(time, "monotonic", no_real_clock)
        patched.setattr(time, "sleep", no_real_clock)
        sim.advance(3600 * 24 * 365)  # a year, at once
        sim.submit("b", print, end="")
        sim.advance(12)
        sim.run_until_idle()
    assert sim.stats().timed_out == 1  # the job on "a"
    assert [record.getMessage() for record in caplog.records] == ["job for b waited 12.00s"]
    assert [step.clock for step in sim.schedule] == [sim.clock]


# -- halts, cancels, nested submits ------------------------------------------------


def test_a_failed_job_halts_its_keys_until_resume() -> None:
    sim = SimulatedDispatcher(halt_on_error=True)
    ran: list[str] = []
    failed = sim.submit("a", failing("bad webhook"))
    halted = sim.submit_multi(["a", "b"], ran.append, "ab")
    free = sim.submit("c", ran.append, "c")
    sim.run_until_idle()
    assert isinstance(failed.exception(0), ValueError)
    error = halted.exception(0)
    assert isinstance(error, KeyHalted)
    assert isinstance(error.__cause__, ValueError)
    assert ran == ["c"]
    assert sim.halted_keys() == frozenset({"a"})  # a halted job halts nothing more
    assert sim.resume("a") is True
    sim.submit("a", ran.append, "resumed")
    sim.run_until_idle()
    assert ran == ["c", "resumed"]
    assert free.result(0) is None


def test_cancelling_a_queued_job_retires_it_and_its_keys_move_on() -> None:
    sim = SimulatedDispatcher()
    ran: list[str] = []
    sim.submit("a", ran.append, "a1")
    both = sim.submit_multi(["a", "b"], ran.append, "ab")  # waits for a1 only
    b2 = sim.submit("b", ran.append, "b2")
    assert both.cancel() is True
    assert both.cancelled()
    sim.step()
    assert sim.schedule[0].among == (1, 3)  # b2 no longer waits behind ab
    sim.run_until_idle()
    assert ran == ["a1", "b2"]
    assert b2.done()
    with pytest.raises(CancelledError):
        both.result(0)
    assert sim.stats().cancelled == 1


def test_a_started_job_cannot_be_cancelled() -> None:
    sim = SimulatedDispatcher()
    futures: list[Future[bool]] = []

    def cancel_itself() -> bool:
        return futures[0].cancel()

    futures.append(sim.submit("a", cancel_itself))
    sim.run_until_idle()
    assert futures[0].result(0) is False


def test_a_job_may_submit_more_jobs() -> None:
    sim = SimulatedDispatcher()
    ran: list[str] = []
    inner: list[Future[None]] = []

    def outer() -> None:
        ran.append("outer")
        inner.append(sim.submit("a", ran.append, "same key"))  # waits for outer to end
        inner.append(sim.submit("b", ran.append, "other key"))
        assert sim.stats().pending == 3

    sim.submit("a", outer)
    sim.submit("a", ran.append, "next")
    sim.run_until_idle()
    assert ran == ["outer", "next", "same key", "other key"]
    assert numbers(sim) == [1, 2, 3, 4]
    assert all(future.done() for future in inner)


def test_steps_cannot_be_taken_inside_a_job() -> None:
    sim = SimulatedDispatcher()
    errors: list[str] = []

    def nested() -> None:
        for call in (sim.step, sim.run_until_idle, sim.shutdown):
            with pytest.raises(RuntimeError, match="inside a job") as caught:
                call()
            errors.append(str(caught.value))

    sim.submit("a", nested)
    sim.run_until_idle()
    assert len(errors) == 3


def test_a_job_raising_keyboard_interrupt_stops_the_run() -> None:
    sim = SimulatedDispatcher()

    def interrupt() -> None:
        raise KeyboardInterrupt

    future = sim.submit("a", interrupt)
    after = sim.submit("a", print)
    with pytest.raises(KeyboardInterrupt):
        sim.run_until_idle()
    assert isinstance(future.exception(0), KeyboardInterrupt)
    sim.run_until_idle()  # the key moved on
    assert after.done()


# -- room: max_shards, max_pending, submit_timeout ---------------------------------


def test_a_submit_waiting_for_room_runs_jobs_until_it_fits() -> None:
    sim = SimulatedDispatcher(max_shards=1)
    ran: list[str] = []
    sim.submit("a", ran.append, "a")
    sim.submit("b", ran.append, "b")  # no shard free: a runs first
    assert ran == ["a"]
    assert numbers(sim) == [1]
    sim.run_until_idle()
    assert ran == ["a", "b"]


def test_a_submit_that_can_never_fit_raises_at_once() -> None:
    sim = SimulatedDispatcher(max_shards=2)
    with pytest.raises(ShardsExhausted, match="can never fit"):
        sim.submit_multi(["a", "b", "c"], print)


def test_a_submit_inside_a_job_that_no_job_can_make_room_for_times_out() -> None:
    sim = SimulatedDispatcher(max_shards=1, submit_timeout=7)
    errors: list[BaseException] = []

    def holds_the_only_shard() -> None:
        try:
            sim.submit("b", print)
        except ShardsExhausted as exc:
            errors.append(exc)

    sim.submit("a", holds_the_only_shard)
    sim.run_until_idle()
    assert [str(e) for e in errors] == ["shard pool exhausted: 1 shards stayed live for 7s"]
    assert sim.clock == 7  # the wait took its submit_timeout


class StopChoosing(BaseException):
    """What Hypothesis raises from a draw to end a test case."""


def test_a_chooser_error_inside_a_waiting_submit_reaches_the_caller() -> None:
    # A submit that waits for room inside a job runs steps there; if the
    # chooser raises (Hypothesis ends a test case so), the jobs on the stack
    # fail with its error and the caller of run_until_idle() gets it.
    calls = 0

    def stops_on_the_third_choice(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StopChoosing
        return jobs[0]

    sim = SimulatedDispatcher(stops_on_the_third_choice, max_shards=3)
    reached: list[str] = []

    def outer() -> None:
        futures.append(sim.submit("b", inner))
        sim.submit("z", print)  # the third shard
        try:
            sim.submit("c", print)  # no room: a step runs inner here
        except Exception:  # noqa: BLE001 - what a handler may do; it must not swallow the stop
            reached.append("outer swallowed it")
        reached.append("outer ended")

    def inner() -> None:
        sim.submit("d", print)  # no room again: the third choice raises
        reached.append("inner ended")

    futures = [sim.submit("a", outer)]
    with pytest.raises(StopChoosing):
        sim.run_until_idle()
    assert reached == []
    assert [type(future.exception(0)) for future in futures] == [StopChoosing, StopChoosing]
    assert calls == 3


def test_a_submit_that_would_wait_for_ever_raises_instead() -> None:
    sim = SimulatedDispatcher(max_shards=1, submit_timeout=math.inf)
    errors: list[BaseException] = []

    def holds_the_only_shard() -> None:
        with pytest.raises(ShardsExhausted) as caught:
            sim.submit("b", print)
        errors.append(caught.value)

    sim.submit("a", holds_the_only_shard)
    sim.run_until_idle()
    assert len(errors) == 1
    assert sim.clock == 0  # the real submit would wait for ever; this one says so at once


def test_an_expired_job_can_make_room_for_a_waiting_submit() -> None:
    sim = SimulatedDispatcher(max_pending=1, start_timeout=2, submit_timeout=5)
    results: list[Future[Any]] = []

    def busy() -> None:
        results.append(sim.submit("a", print))  # pending behind this job
        results.append(sim.submit("c", lambda: "admitted"))  # waits for room

    sim.submit("a", busy)
    sim.run_until_idle()
    stuck, admitted = results
    assert isinstance(stuck.exception(0), StartTimeout)
    assert admitted.result(0) == "admitted"
    assert sim.clock == 2


def test_a_submit_waiting_for_room_gives_up_at_submit_timeout() -> None:
    sim = SimulatedDispatcher(max_pending=1, submit_timeout=3)
    errors: list[BaseException] = []

    def busy() -> None:
        sim.submit("a", print)
        with pytest.raises(SubmitTimeout, match="1 jobs stayed pending for 3s") as caught:
            sim.submit("b", print)
        errors.append(caught.value)

    sim.submit("a", busy)
    sim.run_until_idle()
    assert len(errors) == 1
    assert sim.clock == 3


def test_a_submit_waiting_for_room_sees_a_shutdown() -> None:
    sim = SimulatedDispatcher(max_shards=1)
    sim.submit("a", sim.shutdown, False)
    with pytest.raises(DispatcherClosed, match="while the submit waited"):
        sim.submit("b", print)


# -- coroutine jobs ------------------------------------------------------------------


async def two_halves(log: list[str], name: str) -> str:
    log.append(f"{name}<")
    await asyncio.sleep(0)
    log.append(f"{name}>")
    return name


def test_coroutine_jobs_interleave_at_sleep_zero_and_keep_their_keys() -> None:
    sim = SimulatedDispatcher(last)
    log: list[str] = []
    first = sim.submit("a", two_halves, log, "a1")
    sim.submit("b", two_halves, log, "b1")
    sim.submit("a", two_halves, log, "a2")  # waits for a1, even while a1 is suspended
    sim.run_until_idle()
    # b1 starts, then a1 starts; a2 starts only once a1 has ended.
    assert log == ["b1<", "a1<", "a1>", "a2<", "a2>", "b1>"]
    assert first.result(0) == "a1"
    sim = SimulatedDispatcher(lambda jobs: jobs[0] if jobs[0].started else jobs[-1])
    log.clear()
    sim.submit("a", two_halves, log, "a")
    sim.submit("b", two_halves, log, "b")
    sim.submit("c", two_halves, log, "c")
    sim.run_until_idle()
    assert log == ["c<", "c>", "b<", "b>", "a<", "a>"]
    resumed = [str(step) for step in sim.schedule if step.resumed]
    assert resumed == [
        "step 2: job #3 on key c (two_halves) resumes [among #3 #1 #2]",
        "step 4: job #2 on key b (two_halves) resumes [among #2 #1]",
        "step 6: job #1 on key a (two_halves) resumes [among #1]",
    ]


def test_the_default_chooser_runs_a_coroutine_job_to_its_end_first() -> None:
    sim = SimulatedDispatcher()
    log: list[str] = []
    sim.submit("a", two_halves, log, "a")
    sim.submit("b", two_halves, log, "b")
    sim.run_until_idle()
    assert log == ["a<", "a>", "b<", "b>"]


def test_hypothesis_interleaves_coroutine_jobs() -> None:
    seen: set[tuple[str, ...]] = set()

    @settings(database=None, max_examples=30, deadline=None)
    @given(st.data())
    def explore(data: st.DataObject) -> None:
        rec = OrderRecorder()
        sim = SimulatedDispatcher(hypothesis_chooser(data))
        log: list[str] = []
        for key, name in [("a", "a1"), ("b", "b1"), ("a", "a2")]:
            rec.submit(sim, [key], two_halves, log, name)
        sim.run_until_idle()
        rec.check()
        seen.add(tuple(log))

    explore()
    interleaved = [log for log in seen if log[1].endswith("<")]  # a second job began before the first ended
    assert interleaved


class LoopFuture:
    """Awaits as an asyncio future does: it yields itself to the event loop."""

    def __await__(self) -> Generator[LoopFuture, None, None]:
        yield self


def test_a_coroutine_job_awaiting_a_real_future_fails_at_its_await() -> None:
    sim = SimulatedDispatcher()
    reached: list[str] = []

    async def needs_a_loop() -> None:
        reached.append("before")
        await LoopFuture()
        reached.append("after")

    future = sim.submit("a", needs_a_loop)
    sim.run_until_idle()
    error = future.exception(0)
    assert isinstance(error, RuntimeError)
    assert "job #1 on key a" in str(error)
    assert "asyncio.sleep(0)" in str(error)
    assert reached == ["before"]


def test_a_coroutine_job_may_catch_the_error_of_a_real_await() -> None:
    sim = SimulatedDispatcher()

    async def falls_back() -> str:
        try:
            await LoopFuture()
        except RuntimeError:
            await asyncio.sleep(0)
            return "fell back"
        return "unreachable"

    async def insists() -> None:
        while True:
            with pytest.raises(RuntimeError):
                await LoopFuture()

    fell_back = sim.submit("a", falls_back)
    insisted = sim.submit("b", insists)
    sim.run_until_idle()
    assert fell_back.result(0) == "fell back"
    assert isinstance(insisted.exception(0), RuntimeError)


# -- shutdown and the rest -----------------------------------------------------------


def test_shutdown_runs_or_cancels_what_is_left_and_then_admits_nothing() -> None:
    ran: list[str] = []
    with SimulatedDispatcher() as sim:
        sim.submit("a", ran.append, "a")
    assert ran == ["a"]
    with pytest.raises(DispatcherClosed):
        sim.submit("a", print)
    sim = SimulatedDispatcher()
    queued = sim.submit("a", ran.append, "never")
    sim.shutdown(cancel_pending=True)
    assert queued.cancelled()
    assert ran == ["a"]
    sim.shutdown()  # again: nothing happens


def test_stats_and_repr() -> None:
    sim = SimulatedDispatcher(lambda jobs: next((job for job in jobs if not job.started), jobs[0]))
    seen: list[tuple[int, int]] = []

    async def suspended() -> None:
        await asyncio.sleep(0)

    def look() -> None:
        stats = sim.stats()
        seen.append((stats.workers, stats.running))

    sim.submit("a", suspended)
    sim.submit("b", look)
    sim.step()  # a starts and suspends
    sim.step()
    assert seen == [(2, 2)]
    assert repr(sim) == "<SimulatedDispatcher open clock=0 steps=2 shards=1>"
    sim.run_until_idle()
    assert sim.stats().workers == 0


def chooser_type_check() -> Callable[[Sequence[SimulatedJob]], SimulatedJob]:
    # The public type of a chooser, for mypy: a plain function fits.
    return last


def test_schedule_is_a_copy() -> None:
    sim = SimulatedDispatcher(chooser_type_check())
    sim.submit("a", print, end="")
    sim.run_until_idle()
    steps = sim.schedule
    steps.clear()
    assert len(sim.schedule) == 1
    key: Hashable = sim.schedule[0].job.keys[0]
    assert key == "a"


# -- the example of docs/testing.md ---------------------------------------------------

TESTING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def page_blocks(language: str) -> list[str]:
    section = TESTING_PAGE.read_text().split("## Exploring interleavings", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_the_testing_page_finds_the_webhook_bug_it_shows() -> None:
    example, bug = page_blocks("python")
    (report,) = page_blocks("text")
    namespace: dict[str, Any] = {"__name__": "testing_page"}
    exec(compile(example, "testing.md", "exec"), namespace)  # noqa: S102 - our own docs
    test = namespace["test_every_order_keeps_the_exchange_and_the_database_in_step"]
    test()  # the handler dispatched on all its symbols passes in every order
    exec(compile(bug, "testing.md", "exec"), namespace)  # noqa: S102 - our own docs
    with pytest.raises(AssertionError) as caught:
        test()
    notes = getattr(caught.value, "__notes__", [])
    failure, *rest = report.splitlines()
    assert failure == f"AssertionError: {caught.value}"
    steps = [line for line in rest if line.startswith(("step ", "Draw "))]
    assert len(steps) == 6
    for line in steps:
        assert line in notes
