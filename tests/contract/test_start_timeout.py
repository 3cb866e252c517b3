"""Point 6: a job not started within start_timeout never runs and fails promptly."""

from __future__ import annotations

import threading
import time

from keyed_dispatch import StartTimeout
from keyed_dispatch.testing import OrderRecorder
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_expired_job_fails_while_the_earlier_job_still_runs(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2, start_timeout=0.05)
    gate = gates.new()
    ran = threading.Event()
    blocker = d.submit("k", gate.wait)
    before_admission = time.monotonic()
    stale = d.submit("k", ran.set)
    error = stale.exception(timeout=WAIT)
    failed_at = time.monotonic()
    assert isinstance(error, StartTimeout)
    assert isinstance(error, TimeoutError)
    # The blocker is still blocked: the failure did not wait for the key.
    assert not gate.is_set()
    assert not blocker.done()
    assert failed_at >= before_admission + 0.05
    stats = d.stats()
    assert (stats.timed_out, stats.running, stats.pending) == (1, 1, 0)
    gate.set()
    assert blocker.result(timeout=WAIT) is True
    assert not ran.is_set()


def test_key_moves_on_after_a_timed_out_job(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2, start_timeout=0.05)
    gate = gates.new()
    rec = OrderRecorder()
    blocker = rec.submit(d, ["k"], gate.wait)
    stale = [rec.submit(d, ["k"]), rec.submit(d, ["k", "other"])]
    for future in stale:
        assert isinstance(future.exception(timeout=WAIT), StartTimeout)
    # The expired multi-key job gave "other" up at once.
    assert d.submit("other", lambda: "free").result(timeout=WAIT) == "free"
    gate.set()
    blocker.result(timeout=WAIT)
    wait_until(lambda: d.stats().active_shards == 0, what="the key to go idle")
    # A job admitted when its key is free is taken in the submit call itself,
    # so it cannot expire however slow the machine is.
    rec.submit(d, ["k"]).result(timeout=WAIT)
    rec.check()
    assert d.stats().timed_out == 2


def test_jobs_that_start_in_time_are_unaffected(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(4, start_timeout=WAIT)
    futures = [d.submit(f"k{i % 3}", lambda i=i: i) for i in range(50)]
    assert [f.result(timeout=WAIT) for f in futures] == list(range(50))
    assert d.stats().timed_out == 0


def test_cancel_after_expiry_returns_false(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(1, start_timeout=0.01)
    gate = gates.new()
    d.submit("k", gate.wait)
    stale = d.submit("k", lambda: None)
    assert isinstance(stale.exception(timeout=WAIT), StartTimeout)
    assert not stale.cancel()
    stats = d.stats()
    assert (stats.timed_out, stats.cancelled) == (1, 0)


def test_cancelled_job_does_not_also_time_out(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(1, start_timeout=0.02)
    gate = gates.new()
    d.submit("k", gate.wait)
    doomed = d.submit("k", lambda: None)
    expiring = d.submit("k", lambda: None)
    # Normally the cancel wins; on a stalled machine the deadline may come
    # first. Either way the job is counted once.
    cancelled = doomed.cancel()
    assert isinstance(expiring.exception(timeout=WAIT), StartTimeout)
    stats = d.stats()
    assert (stats.timed_out, stats.cancelled) == ((1, 1) if cancelled else (2, 0))
    assert doomed.cancelled() is cancelled


def test_deadline_timer_handles_deadlines_admitted_over_time(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # The timer sleeps until the oldest deadline; deadlines admitted while it
    # waits (or after it went idle) are served too.
    d = make_dispatcher(1, start_timeout=0.02)
    gate = gates.new()
    d.submit("k", gate.wait)
    first = d.submit("k", lambda: None)
    assert isinstance(first.exception(timeout=WAIT), StartTimeout)
    second = d.submit("k", lambda: None)
    third = d.submit("k", lambda: None)
    for future in (second, third):
        assert isinstance(future.exception(timeout=WAIT), StartTimeout)
    gate.set()
    assert d.stats().timed_out == 3
