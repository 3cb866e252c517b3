"""Cancellation on the thread runner: a running job cannot be cancelled, and
a KeyedFuture behaves like a concurrent.futures.Future (the runner-neutral
semantics are in tests/contract/test_cancel.py)."""

from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import CancelledError, Future

import pytest

from keyed_dispatch import KeyedFuture
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_submit_returns_a_keyed_future_and_a_second_cancel_is_true(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    d.submit("k", gate.wait)
    doomed = d.submit("k", lambda: None)
    assert isinstance(doomed, KeyedFuture)
    assert doomed.cancel()
    with pytest.raises(CancelledError):
        doomed.result(timeout=0)
    gate.set()
    assert doomed.cancel()  # cancelling again still reports cancelled, as in the stdlib
    assert d.stats().cancelled == 1


def test_running_job_cannot_be_cancelled(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(1)
    gate = gates.new()
    started = threading.Event()

    def job() -> str:
        started.set()
        gate.wait(WAIT)
        return "done"

    future = d.submit("k", job)
    assert started.wait(WAIT)
    assert not future.cancel()
    assert future.running()
    gate.set()
    assert future.result(timeout=WAIT) == "done"
    assert not future.cancel()
    assert d.stats().cancelled == 0


def test_cancel_from_a_done_callback_of_another_job(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # A callback runs in the worker that just finished a job; cancelling
    # there must not deadlock on the dispatcher's lock.
    d = make_dispatcher(1)
    gate = gates.new()
    first = d.submit("k", gate.wait)
    second = d.submit("k", lambda: None)
    results: list[bool] = []
    first.add_done_callback(lambda _: results.append(second.cancel()))
    gate.set()
    first.result(timeout=WAIT)
    wait_until(second.done, what="the second job to finish or cancel")
    # The callback runs before the worker releases the key, so it wins.
    assert results == [True]
    assert second.cancelled()


def test_wait_and_as_completed_see_a_cancelled_job(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # concurrent.futures.wait() and as_completed() are woken by
    # set_running_or_notify_cancel(), which a ThreadPoolExecutor worker calls
    # when it meets a cancelled item; a cancelled job never meets a worker
    # here, so the dispatcher must make that call itself.
    d = make_dispatcher(2)
    gate = gates.new()
    d.submit("k", gate.wait)
    doomed = d.submit("k", lambda: None)
    assert doomed.cancel()
    done, not_done = concurrent.futures.wait([doomed], timeout=WAIT)
    assert done == {doomed}
    assert not not_done
    assert list(concurrent.futures.as_completed([doomed], timeout=WAIT)) == [doomed]
    assert doomed.cancel()  # again: still True, and no second notification


def test_cancel_racing_an_expiry_still_wakes_waiters(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # A cancel() marks the future first and tells the dispatcher after; the
    # deadline timer may expire the job in between. The base class's cancel
    # holds that window open for ever: the timer must count the job as
    # cancelled and wake concurrent.futures.wait(), which cancel() alone does
    # not (see KeyedFuture.cancel).
    d = make_dispatcher(2, start_timeout=0.05)
    gate = gates.new()
    d.submit("k", gate.wait)
    stale = d.submit("k", lambda: None)
    assert Future.cancel(stale)
    done, _ = concurrent.futures.wait([stale], timeout=WAIT)
    assert done == {stale}
    stats = d.stats()
    assert (stats.cancelled, stats.timed_out, stats.pending) == (1, 0, 0)
    assert stale.cancelled()


def test_a_keyed_future_made_outside_a_dispatcher_is_a_plain_future() -> None:
    # KeyedFuture is public: a fake dispatcher in a user's tests may create
    # one; it must behave like a concurrent.futures.Future.
    future: KeyedFuture[int] = KeyedFuture()
    assert future.cancel()
    assert future.cancelled()
    done = KeyedFuture[int]()
    done.set_result(3)
    assert not done.cancel()
    assert done.result(timeout=0) == 3
