"""Point 11: shutdown stops admissions, runs or cancels what was admitted, and drains.

For asyncio, shutdown is ``aclose()``; what is specific to each runner
(worker threads, the interpreter's exit, shutdown from inside a job) is in
tests/thread and tests/asyncio.
"""

from __future__ import annotations

import pytest

from keyed_dispatch import DispatcherClosed
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, wait_until


def test_shutdown_runs_what_was_admitted_and_closes(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    out: list[int] = []
    futures = [r.submit(f"k{i % 3}", out.append, i) for i in range(100)]
    r.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futures)
    assert sorted(out) == list(range(100))
    stats = r.stats()
    assert stats.closed
    assert (stats.workers, stats.pending, stats.running, stats.completed) == (0, 0, 0, 100)
    with pytest.raises(DispatcherClosed) as info:
        r.submit("k", print)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(DispatcherClosed):
        r.submit_multi(["a", "b"], print)
    with pytest.raises(DispatcherClosed), r.exclusive(["k"]):
        pass
    assert "closed" in repr(r)


def test_shutdown_is_idempotent(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    r.submit("k", lambda: None).result(timeout=WAIT)
    r.shutdown()
    r.shutdown()
    r.shutdown(wait=False, cancel_pending=True)
    assert r.stats().closed


def test_cancel_pending_cancels_what_has_not_started(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    gate = r.gate()
    running = r.submit("a", r.job(gate, lambda: "ran"))
    wait_until(lambda: r.stats().running == 1, what="the first job to start")
    queued = [r.submit("a", lambda: None), r.submit("b", lambda: None), r.submit_multi(["a", "b"], print)]
    r.shutdown(wait=False, cancel_pending=True)
    assert all(f.cancelled() for f in queued)
    assert not running.done()
    gate.open()
    r.shutdown(wait=True)
    assert running.result(timeout=0) == "ran"
    stats = r.stats()
    assert (stats.cancelled, stats.completed, stats.pending, stats.active_shards) == (3, 1, 0, 0)


def test_shutdown_without_wait_returns_while_jobs_run_and_refuses_new_jobs(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    gate = r.gate()
    blocked = r.submit("k", r.job(gate))
    queued = r.submit("k", lambda: "still runs")
    r.shutdown(wait=False)
    assert r.stats().closed
    assert not blocked.done()
    # Closed while draining: admitted jobs run, new ones are refused.
    with pytest.raises(DispatcherClosed):
        r.submit("k", print)
    gate.open()
    assert queued.result(timeout=WAIT) == "still runs"
    r.shutdown(wait=True)
    assert r.stats().completed == 2
