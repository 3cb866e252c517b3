"""Point 14: stats() is a frozen, consistent snapshot."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from keyed_dispatch import DispatcherStats, StartTimeout
from tests.helpers import WAIT, Gates, MakeDispatcher, settle, wait_until

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


def assert_consistent(stats: DispatcherStats) -> None:
    """The accounting identities that hold in every snapshot."""
    finished = stats.completed + stats.failed + stats.cancelled + stats.timed_out
    assert stats.pending + stats.running + finished == stats.submitted, stats
    assert 0 <= stats.idle_workers <= stats.workers <= stats.max_workers, stats
    assert stats.active_shards <= stats.max_shards, stats
    assert stats.max_wait_s >= 0, stats


def test_fields_and_frozen(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(3, max_shards=50)
    stats = d.stats()
    assert {f.name for f in dataclasses.fields(stats)} >= REQUIRED
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pending = 3  # type: ignore[misc]
    assert stats.as_dict()["max_shards"] == 50
    assert (stats.max_workers, stats.workers, stats.submitted, stats.closed) == (3, 0, 0, False)
    assert_consistent(stats)


def test_snapshot_does_not_change_afterwards(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    before = d.stats()
    d.submit("k", lambda: None).result(timeout=WAIT)
    assert before.submitted == 0
    assert d.stats().submitted == 1


def test_every_outcome_is_counted(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2, start_timeout=0.05)
    gate = gates.new()
    blocker = d.submit("k", gate.wait)
    expired = d.submit("k", lambda: None)
    assert isinstance(expired.exception(timeout=WAIT), StartTimeout)
    gate.set()
    blocker.result(timeout=WAIT)
    wait_until(lambda: d.stats().active_shards == 0, what="k to go idle")
    # Free keys: each job is taken in its submit call, well before 0.05 s.
    d.submit("a", lambda: None).result(timeout=WAIT)
    assert isinstance(d.submit("b", lambda: 1 // 0).exception(timeout=WAIT), ZeroDivisionError)
    settle(d)
    stats = d.stats()
    assert (stats.completed, stats.failed, stats.timed_out, stats.cancelled, stats.submitted) == (
        2,
        1,
        1,
        0,
        4,
    )
    assert_consistent(stats)


def test_live_counts_while_jobs_wait(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    futures = [d.submit("a", gate.wait), d.submit("a", gate.wait), d.submit_multi(["a", "b"], gate.wait)]
    futures.append(d.submit("c", gate.wait))
    wait_until(lambda: d.stats().running == 2, what="two jobs running")
    stats = d.stats()
    assert (stats.running, stats.pending, stats.active_shards, stats.workers) == (2, 2, 3, 2)
    assert_consistent(stats)
    doomed = d.submit("c", gate.wait)
    assert doomed.cancel()
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    wait_until(lambda: d.stats().running == 0, what="all jobs to finish")
    stats = d.stats()
    assert (stats.completed, stats.cancelled, stats.pending) == (4, 1, 0)
    assert_consistent(stats)


def test_max_wait_covers_the_longest_wait(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    admitted = gates.new()

    def earlier_job() -> None:
        admitted.wait(WAIT)
        time.sleep(0.02)  # the job's own work

    d.submit("k", earlier_job)
    late = d.submit("k", lambda: None)
    admitted.set()
    late.result(timeout=WAIT)
    assert d.stats().max_wait_s >= 0.02


def test_consistent_under_concurrent_load(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(4)
    stop = threading.Event()
    snapshots: list[DispatcherStats] = []

    def watch() -> None:
        while True:  # at least one snapshot, even if the load is over first
            snapshots.append(d.stats())
            if stop.is_set():
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        futures = [d.submit_multi([f"k{i % 7}", f"k{i % 3}"], lambda: None) for i in range(500)]
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
