"""Unit tests of the pure ordering engine: no threads, no loop, a fake clock."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyed_dispatch import DispatcherConfig, KeyHalted, StartTimeout
from keyed_dispatch._engine import (
    CANCELLED,
    COMPLETED,
    FAILED,
    HOT_BATCH,
    QUEUED,
    RUNNING,
    TIMED_OUT,
    Engine,
    Job,
    outcome_of,
)


def job(*keys: Hashable, block: bool = False) -> Job:
    fn: Any = None if block else (lambda: None)
    return Job(tuple(keys), fn, (), {}, None)


def test_same_key_jobs_start_in_admission_order_one_at_a_time() -> None:
    engine = Engine(halt_on_error=False)
    a, b, c = job("k"), job("k"), job("k")
    for j in (a, b, c):
        engine.admit(j, 0.0)
    assert engine.take(1.0) is a
    assert engine.take(1.0) is None  # b waits for a
    assert engine.finish(a, COMPLETED, None, 2.0) is b  # the chain goes on on the same worker
    assert b.waited == 2.0
    engine.release(b, COMPLETED)
    assert engine.take(3.0) is c
    engine.release(c, COMPLETED)
    assert engine.idle()
    assert engine.live_keys() == 0


def test_disjoint_keys_are_all_runnable_oldest_first() -> None:
    engine = Engine(halt_on_error=False)
    jobs = [job(key) for key in "abc"]
    for j in jobs:
        engine.admit(j, 0.0)
    assert [engine.take(0.0) for _ in jobs] == jobs
    assert not engine.has_ready()


def test_a_multi_key_job_waits_for_every_key_and_holds_them_all() -> None:
    engine = Engine(halt_on_error=False)
    a, b, ab, later_a = job("a"), job("b"), job("a", "b"), job("a")
    for j in (a, b, ab, later_a):
        engine.admit(j, 0.0)
    assert engine.take(0.0) is a
    assert engine.take(0.0) is b
    engine.release(a, COMPLETED)
    assert engine.take(0.0) is None  # ab still waits for b; later_a waits for ab
    engine.release(b, COMPLETED)
    assert engine.take(0.0) is ab
    assert engine.take(0.0) is None
    engine.release(ab, COMPLETED)
    assert engine.take(0.0) is later_a


def test_killing_a_queued_head_moves_its_keys_on_and_a_buried_job_leaves_lazily() -> None:
    engine = Engine(halt_on_error=False)
    first, buried, last = job("k"), job("k"), job("k")
    for j in (first, buried, last):
        engine.admit(j, 0.0)
    assert engine.kill(buried, CANCELLED)
    assert not engine.kill(buried, CANCELLED)  # once only
    assert engine.take(0.0) is first
    engine.release(first, COMPLETED)
    assert engine.take(0.0) is last  # the dead job surfaced and was dropped
    engine.release(last, COMPLETED)
    stats = engine.stats(DispatcherConfig(), workers=0, idle_workers=0, closed=False)
    assert (stats.completed, stats.cancelled, stats.pending, stats.running) == (2, 1, 0, 0)


def test_kill_refuses_a_running_job() -> None:
    engine = Engine(halt_on_error=False)
    j = job("k")
    engine.admit(j, 0.0)
    assert engine.take(0.0) is j
    assert not engine.kill(j, CANCELLED)
    assert j.state == RUNNING


def test_admit_started_takes_an_uncontended_job_at_once() -> None:
    engine = Engine(halt_on_error=False)
    a, b = job("k"), job("k")
    assert engine.admit_started(a, 0.0)
    assert a.state == RUNNING
    assert not engine.admit_started(b, 0.0)  # behind a
    assert b.state == QUEUED


def test_a_deadline_passed_at_take_sets_start_timeout() -> None:
    engine = Engine(halt_on_error=False)
    j = job("k")
    j.deadline = 1.0
    engine.admit(j, 0.0)
    taken = engine.take(2.0)
    assert taken is j
    assert isinstance(j.error, StartTimeout)
    assert outcome_of(j.error) == TIMED_OUT


def test_halt_on_error_fails_later_jobs_of_the_key_until_resume() -> None:
    engine = Engine(halt_on_error=True)
    bad, next_one, other = job("k"), job("k"), job("other")
    for j in (bad, next_one, other):
        engine.admit(j, 0.0)
    assert engine.take(0.0) is bad
    cause = ValueError("boom")
    assert engine.finish(bad, FAILED, cause, 0.0) is next_one
    assert isinstance(next_one.error, KeyHalted)
    assert next_one.error.__cause__ is cause
    assert outcome_of(next_one.error) == FAILED
    assert engine.halted_keys() == frozenset({"k"})
    assert engine.take(0.0) is other
    assert other.error is None
    assert engine.resume("k")
    assert not engine.resume("k")
    assert engine.halted_keys() == frozenset()


def test_runnable_blocks_wait_apart_from_jobs() -> None:
    engine = Engine(halt_on_error=False)
    blocking, block = job("k"), job("k", block=True)
    engine.admit(blocking, 0.0)
    engine.admit(block, 0.0)
    assert engine.take(0.0) is blocking
    assert not engine.has_blocks()
    engine.release(blocking, COMPLETED)
    assert engine.has_blocks()
    assert not engine.has_ready()
    assert engine.take_block(0.0) is block


def test_a_hot_chain_lets_the_oldest_waiting_job_go_after_a_batch() -> None:
    engine = Engine(halt_on_error=False)
    hot = [job("hot") for _ in range(HOT_BATCH + 2)]
    for j in hot:
        engine.admit(j, 0.0)
    cold = job("cold")
    engine.admit(cold, 0.0)  # admitted after the whole hot backlog
    running = engine.take(0.0)
    assert running is hot[0]
    assert engine.take(0.0) is cold  # a second worker is free: cold runs at once
    engine.release(cold, COMPLETED)
    late = job("late")
    engine.admit(late, 0.0)  # younger than every hot job: waits its turn
    ran = []
    while running is not None:
        ran.append(running)
        running = engine.finish(running, COMPLETED, None, 0.0)
        if running is late:
            break
    # One worker: the hot key ran its batch, then gave one turn to ``late``.
    assert running is late
    assert len(ran) == HOT_BATCH


def test_fits_counts_new_keys_and_pending_jobs() -> None:
    engine = Engine(halt_on_error=False)
    engine.admit(job("a"), 0.0)
    engine.admit(job("b"), 0.0)
    assert engine.fits(("a", "b"), 2, None)  # no new shard needed
    assert not engine.fits(("c",), 2, None)
    assert engine.shards_full(("a", "c"), 2)
    assert not engine.fits(("a",), 10, 2)  # two pending already
    assert engine.fits(("a",), 10, 3)


def test_queued_jobs_lists_live_unstarted_jobs_oldest_first() -> None:
    engine = Engine(halt_on_error=False)
    a, ab, b, dead = job("a"), job("a", "b"), job("b"), job("b")
    for j in (a, ab, b, dead):
        engine.admit(j, 0.0)
    engine.kill(dead, CANCELLED)
    assert engine.take(0.0) is a
    assert engine.queued_jobs() == [ab, b]


@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_any_schedule_of_takes_keeps_order_and_exclusion(
    plan: list[tuple[list[str], bool]], rnd: Any
) -> None:
    # Admit jobs (some later cancelled), then retire running jobs in a random
    # order: every job on a key starts after the earlier ones of that key
    # finished, none overlaps another on a key, and everything drains.
    engine = Engine(halt_on_error=False)
    jobs = [job(*keys) for keys, _ in plan]
    for j in jobs:
        engine.admit(j, 0.0)
    cancelled = {
        id(j) for j, (_, cancel) in zip(jobs, plan, strict=True) if cancel and engine.kill(j, CANCELLED)
    }
    running: list[Job] = []
    started: list[Job] = []
    finished: set[int] = set()
    while True:
        taken = engine.take(0.0)
        while taken is not None:
            held = {key for r in running for key in r.keys}
            assert not held & set(taken.keys), "two jobs on one key at once"
            for earlier in jobs[: jobs.index(taken)]:
                if set(earlier.keys) & set(taken.keys) and id(earlier) not in cancelled:
                    assert id(earlier) in finished, "a job overtook an earlier job of its key"
            running.append(taken)
            started.append(taken)
            taken = engine.take(0.0)
        if not running:
            break
        done = running.pop(rnd.randrange(len(running)))
        engine.release(done, COMPLETED)
        finished.add(id(done))
    assert len(started) + len(cancelled) == len(jobs)
    assert engine.idle()
    assert engine.live_keys() == 0


def test_outcome_of_a_plain_error_is_failed() -> None:
    assert outcome_of(RuntimeError()) == FAILED


@pytest.mark.parametrize("outcome", [COMPLETED, FAILED, CANCELLED])
def test_release_counts_each_outcome(outcome: int) -> None:
    engine = Engine(halt_on_error=False)
    j = job("k")
    engine.admit(j, 0.0)
    engine.take(0.0)
    engine.release(j, outcome)
    stats = engine.stats(DispatcherConfig(), workers=0, idle_workers=0, closed=True)
    assert (stats.completed, stats.failed, stats.cancelled) == tuple(int(outcome == o) for o in range(3))
    assert stats.closed


def test_runnable_jobs_lists_what_take_would_start_in_its_order() -> None:
    engine = Engine(halt_on_error=False)
    a1, b1, a2, ab, c1 = job("a"), job("b"), job("a"), job("a", "b"), job("c")
    for j in (a1, b1, a2, ab, c1):
        engine.admit(j, 0.0)
    assert engine.runnable_jobs() == [a1, b1, c1]
    assert engine.kill(b1, CANCELLED)  # killed while runnable: no longer listed
    assert engine.runnable_jobs() == [a1, c1]
    assert engine.take(0.0) is a1
    assert engine.runnable_jobs() == [c1]


def test_take_job_starts_a_chosen_runnable_job_ahead_of_older_ones() -> None:
    engine = Engine(halt_on_error=False)
    a, b, c = job("a"), job("b"), job("c")
    for j in (a, b, c):
        engine.admit(j, 0.0)
    assert engine.take_job(c, 2.0) is c
    assert (c.state, c.waited, c.error) == (RUNNING, 2.0, None)
    assert engine.runnable_jobs() == [a, b]
    assert engine.take(2.0) is a  # the others keep their order
    engine.release(c, COMPLETED)
    assert engine.take(2.0) is b
    assert engine.take(2.0) is None


def test_take_job_refuses_a_job_that_is_not_runnable() -> None:
    engine = Engine(halt_on_error=False)
    first, second, block = job("k"), job("k"), job("x", block=True)
    for j in (first, second, block):
        engine.admit(j, 0.0)
    with pytest.raises(ValueError, match="not runnable"):
        engine.take_job(second, 0.0)  # waits for ``first``
    with pytest.raises(ValueError, match="not runnable"):
        engine.take_job(block, 0.0)  # an exclusive block is granted by take_block
    engine.take_job(first, 0.0)
    with pytest.raises(ValueError, match="not runnable"):
        engine.take_job(first, 0.0)  # already running
    assert second.state == QUEUED


def test_take_job_sets_the_error_of_a_job_on_a_halted_key() -> None:
    engine = Engine(halt_on_error=True)
    failing_job, halted, free = job("k"), job("k"), job("f")
    for j in (failing_job, halted, free):
        engine.admit(j, 0.0)
    engine.take_job(failing_job, 0.0)
    engine.release(failing_job, FAILED, ValueError("boom"))
    assert engine.runnable_jobs() == [halted, free]
    engine.take_job(halted, 1.0)
    assert isinstance(halted.error, KeyHalted)
    assert isinstance(halted.error.__cause__, ValueError)
