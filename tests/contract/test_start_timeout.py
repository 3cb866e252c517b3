"""Point 6: a job not started within start_timeout never runs and fails promptly."""

from __future__ import annotations

import threading
import time

import pytest

from keyed_dispatch import StartTimeout
from keyed_dispatch.testing import OrderRecorder
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, wait_until


def test_expired_job_fails_while_the_earlier_job_still_runs(make_runner: MakeRunner) -> None:
    r = make_runner(2, start_timeout=0.05)
    gate = r.gate()
    ran = threading.Event()
    blocker = r.submit("k", r.job(gate, lambda: "blocker"))
    before_admission = time.monotonic()
    stale = r.submit("k", ran.set)
    error = stale.exception(timeout=WAIT)
    failed_at = time.monotonic()
    assert isinstance(error, StartTimeout)
    assert isinstance(error, TimeoutError)
    # The blocker is still blocked: the failure did not wait for the key.
    assert not gate.is_open()
    assert not blocker.done()
    assert failed_at >= before_admission + 0.05
    stats = r.stats()
    assert (stats.timed_out, stats.running, stats.pending) == (1, 1, 0)
    gate.open()
    assert blocker.result(timeout=WAIT) == "blocker"
    assert not ran.is_set()


def test_key_moves_on_after_a_timed_out_job(make_runner: MakeRunner) -> None:
    r = make_runner(2, start_timeout=0.05)
    gate = r.gate()
    rec = OrderRecorder()
    blocker = rec.submit(r, ["k"], r.job(gate))
    stale = [rec.submit(r, ["k"], r.job()), rec.submit(r, ["k", "other"], r.job())]
    for future in stale:
        assert isinstance(future.exception(timeout=WAIT), StartTimeout)
    # The expired multi-key job gave "other" up at once.
    assert r.submit("other", lambda: "free").result(timeout=WAIT) == "free"
    gate.open()
    blocker.result(timeout=WAIT)
    wait_until(lambda: r.stats().active_shards == 0, what="the key to go idle")
    # A job admitted when its key is free is taken in the submit call itself,
    # so it cannot expire however slow the machine is.
    rec.submit(r, ["k"], r.job()).result(timeout=WAIT)
    rec.check()
    assert r.stats().timed_out == 2


def test_jobs_that_start_in_time_are_unaffected(make_runner: MakeRunner) -> None:
    r = make_runner(4, start_timeout=WAIT)
    futures = [r.submit(f"k{i % 3}", lambda i=i: i) for i in range(50)]
    assert [f.result(timeout=WAIT) for f in futures] == list(range(50))
    assert r.stats().timed_out == 0


def test_cancel_after_expiry_returns_false(make_runner: MakeRunner) -> None:
    r = make_runner(1, start_timeout=0.01)
    gate = r.gate()
    r.submit("k", r.job(gate))
    stale = r.submit("k", lambda: None)
    assert isinstance(stale.exception(timeout=WAIT), StartTimeout)
    assert not stale.cancel()
    stats = r.stats()
    assert (stats.timed_out, stats.cancelled) == (1, 0)


def test_cancelled_job_does_not_also_time_out(make_runner: MakeRunner) -> None:
    r = make_runner(1, start_timeout=0.02)
    gate = r.gate()
    r.submit("k", r.job(gate))
    doomed = r.submit("k", lambda: None)
    expiring = r.submit("k", lambda: None)
    # Normally the cancel wins; on a stalled machine the deadline may come
    # first. Either way the job is counted once.
    cancelled = doomed.cancel()
    assert isinstance(expiring.exception(timeout=WAIT), StartTimeout)
    stats = r.stats()
    assert (stats.timed_out, stats.cancelled) == ((1, 1) if cancelled else (2, 0))
    assert doomed.cancelled() is cancelled


def test_deadline_timer_handles_deadlines_admitted_over_time(make_runner: MakeRunner) -> None:
    # The timer sleeps until the oldest deadline; deadlines admitted while it
    # waits (or after it went idle) are served too.
    r = make_runner(1, start_timeout=0.02)
    gate = r.gate()
    r.submit("k", r.job(gate))
    first = r.submit("k", lambda: None)
    assert isinstance(first.exception(timeout=WAIT), StartTimeout)
    second = r.submit("k", lambda: None)
    third = r.submit("k", lambda: None)
    for future in (second, third):
        assert isinstance(future.exception(timeout=WAIT), StartTimeout)
    gate.open()
    assert r.stats().timed_out == 3


@pytest.mark.slow
def test_deadlines_of_started_jobs_are_skipped_and_later_ones_still_fire(make_runner: MakeRunner) -> None:
    # The middle job must start within start_timeout of its admission: a
    # margin for a loaded machine.
    r = make_runner(8, start_timeout=0.2)
    blocker, middle = r.gate(), r.gate()
    r.submit("k", r.job(blocker))
    started_in_time = r.submit("k", r.job(middle, lambda: "middle"))
    blocker.open()
    assert middle.entered.wait(WAIT)  # started before its deadline
    late = r.submit("k", lambda: "late")
    assert isinstance(late.exception(timeout=WAIT), StartTimeout)
    middle.open()
    assert started_in_time.result(timeout=WAIT) == "middle"
    assert r.stats().timed_out == 1
