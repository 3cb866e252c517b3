"""Point 7: cancelling a pending job means it never runs, and its keys move on at once.

What each runner does with a cancel of a running job differs (a thread
cannot be interrupted; a task can): see tests/thread and tests/asyncio.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from keyed_dispatch.testing import OrderRecorder
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, wait_until


def test_cancel_pending_job(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    ran = threading.Event()
    blocker = r.submit("k", r.job(gate, lambda: "blocker"))
    doomed = r.submit("k", ran.set)
    after = r.submit("k", lambda: "after")
    assert doomed.cancel()
    assert doomed.cancelled()
    with pytest.raises(CancelledError):
        doomed.result(timeout=0)
    assert r.stats().cancelled == 1
    gate.open()
    assert after.result(timeout=WAIT) == "after"
    assert blocker.result(timeout=WAIT) == "blocker"
    assert not ran.is_set()
    assert r.stats().cancelled == 1


def test_cancelling_the_head_lets_the_key_move_on_at_once(make_runner: MakeRunner) -> None:
    # A multi-key job waiting for "a" also holds "b": cancelling it frees
    # "b" for the jobs behind it while "a" is still busy.
    r = make_runner(2)
    gate = r.gate()
    r.submit("a", r.job(gate))
    both = r.submit_multi(["a", "b"], lambda: None)
    behind = r.submit("b", lambda: "b ran")
    assert not behind.done()
    assert both.cancel()
    assert behind.result(timeout=WAIT) == "b ran"
    assert not gate.is_open()


def test_cancel_a_runnable_job_waiting_for_a_worker(make_runner: MakeRunner) -> None:
    # "b" is free but the only worker is busy: its job is runnable, queued
    # for a worker, and still cancellable.
    r = make_runner(1)
    gate = r.gate()
    r.submit("a", r.job(gate))
    ran = threading.Event()
    doomed = r.submit("b", ran.set)
    later = r.submit("b", lambda: "later")
    assert doomed.cancel()
    gate.open()
    assert later.result(timeout=WAIT) == "later"
    assert not ran.is_set()


def test_cancelled_jobs_never_run_in_a_random_mix(make_runner: MakeRunner) -> None:
    r = make_runner(3)
    gate = r.gate()
    rec = OrderRecorder()
    heads = [rec.submit(r, [key], r.job(gate)) for key in "abc"]
    job = r.job(0)
    futures = [
        rec.submit(r, ["abc"[i % 3], "abc"[(i + 1) % 3]] if i % 4 == 0 else ["abc"[i % 3]], job)
        for i in range(60)
    ]
    cancelled = [future.cancel() for future in futures[::3]]
    assert all(cancelled)
    gate.open()
    for future in heads + futures:
        if not future.cancelled():
            future.result(timeout=WAIT)
    rec.check()
    wait_until(lambda: r.stats().active_shards == 0, what="shards to free")
    assert r.stats().cancelled == len(cancelled)
