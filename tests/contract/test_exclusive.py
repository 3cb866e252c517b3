"""Point 9: exclusive() admits the calling thread like a job on its keys."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from keyed_dispatch import DispatcherClosed, StartTimeout
from tests.helpers import WAIT, Gates, MakeDispatcher, settle, wait_until


def test_block_holds_its_keys_and_later_jobs_wait(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    order: list[str] = []
    with d.exclusive(["a", "b"]):
        later = [d.submit("a", order.append, "job a"), d.submit("b", order.append, "job b")]
        free = d.submit("c", lambda: "c runs")
        assert free.result(timeout=WAIT) == "c runs"
        wait_until(lambda: d.stats().running == 1, what="the job on c to retire")
        assert d.stats().pending == 2
        order.append("block")
    for future in later:
        future.result(timeout=WAIT)
    assert order[0] == "block"
    assert sorted(order[1:]) == ["job a", "job b"]


def test_block_waits_for_earlier_jobs(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    order: list[str] = []

    def earlier() -> None:
        gate.wait(WAIT)
        order.append("job")

    d.submit("k", earlier)
    entered = threading.Event()

    def holder() -> None:
        with d.exclusive(["k"], timeout=None):
            entered.set()
            order.append("block")

    thread = threading.Thread(target=holder)
    thread.start()
    wait_until(lambda: d.stats().pending == 1, what="the block to queue")
    assert not entered.is_set()
    gate.set()
    thread.join(timeout=WAIT)
    assert order == ["job", "block"]


def test_block_on_a_free_key_needs_no_worker(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # The only worker is busy on "a"; a block on "b" runs in the caller's
    # thread and must not wait for a worker.
    d = make_dispatcher(1)
    gate = gates.new()
    busy = d.submit("a", gate.wait)
    with d.exclusive(["b"], timeout=WAIT):
        assert not busy.done()
    gate.set()
    busy.result(timeout=WAIT)


def test_block_needs_no_worker_behind_older_runnable_jobs(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # Older runnable jobs queue for the busy worker; the block, admitted
    # after them on a free key, still needs no worker and goes in.
    d = make_dispatcher(1)
    gate = gates.new()
    busy = d.submit("a", gate.wait)
    queued = d.submit("b", lambda: "b ran")
    with d.exclusive(["c"], timeout=WAIT):
        assert not queued.done()
    gate.set()
    assert queued.result(timeout=WAIT) == "b ran"
    busy.result(timeout=WAIT)


def test_timeout_raises_start_timeout_and_gives_the_place_up(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    blocker = d.submit("k", gate.wait)
    with pytest.raises(StartTimeout, match="did not get its turn"), d.exclusive(["k", "x"], timeout=0.01):
        pytest.fail("the block must not run")
    # Its place is given up: "x" is free again, and "k" goes to the next job.
    assert d.submit("x", lambda: "x free").result(timeout=WAIT) == "x free"
    after = d.submit("k", lambda: "after")
    gate.set()
    assert after.result(timeout=WAIT) == "after"
    assert blocker.result(timeout=WAIT) is True
    assert d.stats().cancelled == 1


def test_reentry_from_a_job_raises_runtime_error(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)

    def job() -> None:
        with d.exclusive(["k"]):
            pass

    def other_key_job() -> None:
        with d.exclusive(["elsewhere"]):
            pass

    for fn in (job, other_key_job):
        error = d.submit("k", fn).exception(timeout=WAIT)
        assert isinstance(error, RuntimeError)
        assert "already holds keys k" in str(error)
    # The refused job released its key.
    assert d.submit("k", lambda: "ok").result(timeout=WAIT) == "ok"


def test_reentry_from_a_block_raises_runtime_error(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    with d.exclusive(["a", "b"]):
        with pytest.raises(RuntimeError, match="already holds keys a\\+b"), d.exclusive(["b"]):
            pytest.fail("nested block must not run")
        with pytest.raises(RuntimeError, match="would wait for itself"):
            d.shutdown(wait=True)
    # After the block the thread holds nothing and may enter again.
    with d.exclusive(["b"]):
        pass


def test_error_in_block_propagates_and_releases(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    with pytest.raises(LookupError), d.exclusive(["k"]):
        raise LookupError
    assert d.submit("k", lambda: 1).result(timeout=WAIT) == 1
    settle(d)
    stats = d.stats()
    assert (stats.failed, stats.completed, stats.active_shards) == (1, 1, 0)


def test_block_waiting_when_shutdown_cancels_raises_dispatcher_closed(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(1)
    gate = gates.new()
    d.submit("k", gate.wait)
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with d.exclusive(["k"], timeout=WAIT):
                pass
        except DispatcherClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    wait_until(lambda: d.stats().pending == 1, what="the block to queue")
    d.shutdown(wait=False, cancel_pending=True)
    thread.join(timeout=WAIT)
    assert len(errors) == 1
    with pytest.raises(DispatcherClosed), d.exclusive(["k"]):
        pass


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_bad_timeouts(make_dispatcher: MakeDispatcher, timeout: Any, error: type[Exception]) -> None:
    d = make_dispatcher(1)
    with pytest.raises(error, match="timeout"), d.exclusive(["k"], timeout=timeout):
        pass
    assert d.stats().submitted == 0


def test_zero_timeout_on_a_free_key_enters(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    with d.exclusive(["k"], timeout=0):
        assert d.stats().running == 1
