"""Point 14: stats() is a frozen, consistent snapshot."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from keyed_dispatch import DispatcherStats, StartTimeout
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, assert_consistent, settle, wait_until

REQUIRED = {
    "max_workers",
    "workers",
    "active_shards",
    "max_shards",
    "pending",
    "running",
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "timed_out",
    "max_wait_s",
}


def test_fields_and_frozen(make_runner: MakeRunner) -> None:
    r = make_runner(3, max_shards=50)
    stats = r.stats()
    assert {f.name for f in dataclasses.fields(stats)} >= REQUIRED
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pending = 3  # type: ignore[misc]
    assert stats.as_dict()["max_shards"] == 50
    assert (stats.max_workers, stats.workers, stats.submitted, stats.closed) == (3, 0, 0, False)
    assert_consistent(stats)


def test_snapshot_does_not_change_afterwards(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    before = r.stats()
    r.submit("k", lambda: None).result(timeout=WAIT)
    assert before.submitted == 0
    assert r.stats().submitted == 1


def test_every_outcome_is_counted(make_runner: MakeRunner) -> None:
    r = make_runner(2, start_timeout=0.05)
    gate = r.gate()
    blocker = r.submit("k", r.job(gate))
    expired = r.submit("k", lambda: None)
    assert isinstance(expired.exception(timeout=WAIT), StartTimeout)
    gate.open()
    blocker.result(timeout=WAIT)
    wait_until(lambda: r.stats().active_shards == 0, what="k to go idle")
    # Free keys: each job is taken in its submit call, well before 0.05 s.
    r.submit("a", lambda: None).result(timeout=WAIT)
    assert isinstance(r.submit("b", lambda: 1 // 0).exception(timeout=WAIT), ZeroDivisionError)
    settle(r)
    stats = r.stats()
    assert (stats.completed, stats.failed, stats.timed_out, stats.cancelled, stats.submitted) == (
        2,
        1,
        1,
        0,
        4,
    )
    assert_consistent(stats)


def test_live_counts_while_jobs_wait(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    job = r.job(gate)
    futures = [r.submit("a", job), r.submit("a", job), r.submit_multi(["a", "b"], job)]
    futures.append(r.submit("c", job))
    wait_until(lambda: r.stats().running == 2, what="two jobs running")
    stats = r.stats()
    assert (stats.running, stats.pending, stats.active_shards, stats.workers) == (2, 2, 3, 2)
    assert_consistent(stats)
    doomed = r.submit("c", job)
    assert doomed.cancel()
    gate.open()
    for future in futures:
        future.result(timeout=WAIT)
    wait_until(lambda: r.stats().running == 0, what="all jobs to finish")
    stats = r.stats()
    assert (stats.completed, stats.cancelled, stats.pending) == (4, 1, 0)
    assert_consistent(stats)


def test_every_counter_of_a_snapshot(make_runner: MakeRunner) -> None:
    r = make_runner(4, max_shards=10)
    gate_a, gate_b = r.gate(), r.gate()
    r.submit("a", r.job(gate_a))
    cancelled = r.submit("a", lambda: 1)
    r.submit("b", r.job(gate_b))
    assert cancelled.cancel()
    assert gate_a.entered.wait(WAIT)
    assert gate_b.entered.wait(WAIT)
    snapshot = r.stats()
    gate_a.open()
    gate_b.open()
    r.shutdown()
    final = r.stats()
    assert snapshot.as_dict() == {
        "max_workers": 4,
        "workers": 2,
        "idle_workers": 0,
        "active_shards": 2,
        "max_shards": 10,
        "pending": 0,
        "running": 2,
        "submitted": 3,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
        "timed_out": 0,
        "halted_keys": 0,
        "max_wait_s": snapshot.max_wait_s,
        "closed": False,
        "superseded": 0,
        "retries": 0,
        "in_backoff": 0,
        "paused_keys": 0,
        "failures": (),
        "wait": None,
        "run": None,
    }
    assert (final.completed, final.running, final.active_shards, final.closed) == (2, 0, 0, True)
    assert "closed" in repr(r)


def test_max_wait_covers_the_longest_wait(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    admitted = r.gate()
    # The earlier job works 0.02 s once the late job is admitted.
    r.submit("k", r.job(admitted, 0.02))
    late = r.submit("k", lambda: None)
    admitted.open()
    late.result(timeout=WAIT)
    assert r.stats().max_wait_s >= 0.02


@pytest.mark.slow
def test_consistent_under_concurrent_load(make_runner: MakeRunner) -> None:
    r = make_runner(4)
    stop = threading.Event()
    snapshots: list[DispatcherStats] = []

    def watch() -> None:
        while True:  # at least one snapshot, even if the load is over first
            snapshots.append(r.stats())
            if stop.is_set():
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        futures = [r.submit_multi([f"k{i % 7}", f"k{i % 3}"], lambda: None) for i in range(500)]
        for future in futures[::5]:
            future.cancel()
        for future in futures:
            if not future.cancelled():
                future.result(timeout=WAIT)
    finally:
        stop.set()
        watcher.join(timeout=WAIT)
    assert snapshots
    for stats in snapshots:
        assert_consistent(stats)
