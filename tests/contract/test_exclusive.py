"""Point 9: exclusive() admits its caller like a job on its keys.

Re-entry (a job or block of the dispatcher asking for keys again) is refused
by each runner in its own terms: see tests/thread and tests/asyncio.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from keyed_dispatch import DispatcherClosed, StartTimeout
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, settle, wait_until


def test_block_holds_its_keys_and_later_jobs_wait(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    order: list[str] = []
    with r.exclusive(["a", "b"]):
        later = [r.submit("a", order.append, "job a"), r.submit("b", order.append, "job b")]
        free = r.submit("c", lambda: "c runs")
        assert free.result(timeout=WAIT) == "c runs"
        wait_until(lambda: r.stats().running == 1, what="the job on c to retire")
        assert r.stats().pending == 2
        order.append("block")
    for future in later:
        future.result(timeout=WAIT)
    assert order[0] == "block"
    assert sorted(order[1:]) == ["job a", "job b"]


def test_block_waits_for_earlier_jobs(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    order: list[str] = []
    r.submit("k", r.job(gate, lambda: order.append("job")))
    entered = threading.Event()

    def holder() -> None:
        with r.exclusive(["k"], timeout=None):
            entered.set()
            order.append("block")

    thread = threading.Thread(target=holder)
    thread.start()
    wait_until(lambda: r.stats().pending == 1, what="the block to queue")
    assert not entered.is_set()
    gate.open()
    thread.join(timeout=WAIT)
    assert order == ["job", "block"]


def test_block_on_a_free_key_needs_no_worker(make_runner: MakeRunner) -> None:
    # The only worker is busy on "a"; a block on "b" runs in its caller and
    # must not wait for a worker.
    r = make_runner(1)
    gate = r.gate()
    busy = r.submit("a", r.job(gate))
    with r.exclusive(["b"], timeout=WAIT):
        assert not busy.done()
    gate.open()
    busy.result(timeout=WAIT)


def test_block_needs_no_worker_behind_older_runnable_jobs(make_runner: MakeRunner) -> None:
    # Older runnable jobs queue for the busy worker; the block, admitted
    # after them on a free key, still needs no worker and goes in.
    r = make_runner(1)
    gate = r.gate()
    busy = r.submit("a", r.job(gate))
    queued = r.submit("b", lambda: "b ran")
    with r.exclusive(["c"], timeout=WAIT):
        assert not queued.done()
    gate.open()
    assert queued.result(timeout=WAIT) == "b ran"
    busy.result(timeout=WAIT)


def test_timeout_raises_start_timeout_and_gives_the_place_up(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    blocker = r.submit("k", r.job(gate, lambda: "blocker"))
    with pytest.raises(StartTimeout, match="did not get its turn"), r.exclusive(["k", "x"], timeout=0.01):
        pytest.fail("the block must not run")
    # Its place is given up: "x" is free again, and "k" goes to the next job.
    assert r.stats().pending == 0
    assert r.submit("x", lambda: "x free").result(timeout=WAIT) == "x free"
    after = r.submit("k", lambda: "after")
    gate.open()
    assert after.result(timeout=WAIT) == "after"
    assert blocker.result(timeout=WAIT) == "blocker"
    assert r.stats().cancelled == 1


def test_error_in_block_propagates_and_releases(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    with pytest.raises(LookupError), r.exclusive(["k"]):
        raise LookupError
    assert r.submit("k", lambda: 1).result(timeout=WAIT) == 1
    settle(r)
    stats = r.stats()
    assert (stats.failed, stats.completed, stats.active_shards) == (1, 1, 0)


def test_block_waiting_when_shutdown_cancels_raises_dispatcher_closed(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    gate = r.gate()
    r.submit("k", r.job(gate))
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with r.exclusive(["k"], timeout=WAIT):
                pass
        except DispatcherClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    wait_until(lambda: r.stats().pending == 1, what="the block to queue")
    r.shutdown(wait=False, cancel_pending=True)
    thread.join(timeout=WAIT)
    assert len(errors) == 1
    with pytest.raises(DispatcherClosed), r.exclusive(["k"]):
        pass


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_bad_timeouts(make_runner: MakeRunner, timeout: Any, error: type[Exception]) -> None:
    r = make_runner(1)
    with pytest.raises(error, match="timeout"), r.exclusive(["k"], timeout=timeout):
        pass
    assert r.stats().submitted == 0


def test_zero_timeout_on_a_free_key_enters(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    with r.exclusive(["k"], timeout=0):
        assert r.stats().running == 1
