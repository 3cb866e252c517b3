"""Points 4 and 5: bounded shards and backpressure; a timed-out submit leaves no trace."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from keyed_dispatch import DispatcherClosed, ShardsExhausted, SubmitTimeout
from tests.contract.conftest import MakeRunner
from tests.contract.runners import Runner
from tests.helpers import WAIT, wait_until


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    """Start ``call()`` in a thread; returns it and the list its result or error goes to."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test, which checks it
            outcome.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def assert_still_waiting(thread: threading.Thread) -> None:
    # The submit must not return while there is no room. Waiting a little
    # is the only way to see that it did not (nothing announces it).
    thread.join(timeout=0.05)
    assert thread.is_alive()


def test_a_shard_lives_only_while_its_key_has_work(runner: Runner) -> None:
    assert runner.stats().active_shards == 0
    gate = runner.gate()
    job = runner.job(gate)
    futures = [runner.submit(key, job) for key in "abc"] + [runner.submit("a", lambda: None)]
    assert runner.stats().active_shards == 3
    gate.open()
    for future in futures:
        future.result(timeout=WAIT)
    wait_until(lambda: runner.stats().active_shards == 0, what="idle keys to free their shards")


def test_new_key_beyond_max_shards_raises_shards_exhausted(
    make_runner: MakeRunner, caplog: pytest.LogCaptureFixture
) -> None:
    r = make_runner(4, max_shards=2, submit_timeout=0.01)
    gate = r.gate()
    r.submit("a", r.job(gate))
    r.submit("b", r.job(gate))
    before = r.stats()
    ran = threading.Event()
    with caplog.at_level(logging.ERROR, logger="keyed_dispatch"), pytest.raises(ShardsExhausted) as info:
        r.submit("c", ran.set)
    assert isinstance(info.value, SubmitTimeout)
    assert isinstance(info.value, TimeoutError)
    assert [rec.getMessage() for rec in caplog.records if rec.name == "keyed_dispatch"] == [
        "shard pool exhausted: 2 shards"
    ]
    # No trace: nothing admitted, no shard created.
    assert r.stats() == before
    gate.open()
    wait_until(lambda: r.stats().active_shards == 0, what="shards to free")
    assert not ran.is_set()


def test_live_keys_are_never_blocked_by_the_shard_bound(make_runner: MakeRunner) -> None:
    # submit_timeout=0 would raise at once if the submit waited for room.
    r = make_runner(4, max_shards=2, submit_timeout=0)
    gate = r.gate()
    futures: list[Future[Any]] = [r.submit("a", r.job(gate)), r.submit("b", r.job(gate))]
    futures += [r.submit("a", lambda: None), r.submit_multi(["b", "a"], lambda: None)]
    with pytest.raises(ShardsExhausted):
        r.submit_multi(["a", "c"], lambda: None)
    gate.open()
    for future in futures:
        future.result(timeout=WAIT)


def test_a_waiting_submit_gets_the_shard_that_frees(make_runner: MakeRunner) -> None:
    r = make_runner(4, max_shards=1, submit_timeout=WAIT)
    gate = r.gate()
    first = r.submit("a", r.job(gate, lambda: "a ran"))
    submitter, outcome = in_thread(lambda: r.submit("b", lambda: "b ran"))
    # The submit cannot return while "a" holds the only shard.
    assert_still_waiting(submitter)
    assert r.stats().submitted == 1
    gate.open()
    submitter.join(timeout=WAIT)
    assert outcome[0].result(timeout=WAIT) == "b ran"
    assert first.result(timeout=WAIT) == "a ran"


def test_job_with_more_keys_than_max_shards_fails_at_once(make_runner: MakeRunner) -> None:
    r = make_runner(1, max_shards=2, submit_timeout=WAIT)
    with pytest.raises(ShardsExhausted, match="can never fit"):
        r.submit_multi(["a", "b", "c"], lambda: None)
    assert r.stats().submitted == 0


def test_max_pending_raises_submit_timeout_and_leaves_no_trace(make_runner: MakeRunner) -> None:
    r = make_runner(4, max_pending=2, submit_timeout=0.01)
    gate = r.gate()
    futures: list[Future[Any]] = [
        r.submit("a", r.job(gate)),
        r.submit("a", lambda: None),
        r.submit("a", lambda: None),
    ]
    before = r.stats()
    assert (before.running, before.pending) == (1, 2)
    ran = threading.Event()
    for key in ("a", "new-key"):
        with pytest.raises(SubmitTimeout) as info:
            r.submit(key, ran.set)
        assert not isinstance(info.value, ShardsExhausted)
        assert r.stats() == before
    gate.open()
    for future in futures:
        future.result(timeout=WAIT)
    assert not ran.is_set()
    assert r.stats().submitted == 3


def test_backpressure_admits_once_room_frees(make_runner: MakeRunner) -> None:
    r = make_runner(1, max_pending=1, submit_timeout=WAIT)
    gate = r.gate()
    futures: list[Future[Any]] = [r.submit("a", r.job(gate, lambda: 0)), r.submit("b", lambda: 1)]
    submitter, outcome = in_thread(lambda: r.submit("c", lambda: 2))
    assert_still_waiting(submitter)
    gate.open()
    submitter.join(timeout=WAIT)
    futures += outcome
    assert [f.result(timeout=WAIT) for f in futures] == [0, 1, 2]


def test_submit_waiting_for_room_raises_dispatcher_closed_on_shutdown(make_runner: MakeRunner) -> None:
    r = make_runner(1, max_pending=1, submit_timeout=WAIT)
    gate = r.gate()
    r.submit("a", r.job(gate))
    r.submit("a", lambda: None)
    submitter, outcome = in_thread(lambda: r.submit("a", lambda: None))
    assert_still_waiting(submitter)
    r.shutdown(wait=False)
    submitter.join(timeout=WAIT)
    assert len(outcome) == 1
    assert isinstance(outcome[0], DispatcherClosed)
    gate.open()
    r.shutdown(wait=True)
    assert r.stats().submitted == 2


def test_a_cancel_makes_room_for_a_waiting_submit(make_runner: MakeRunner) -> None:
    r = make_runner(1, max_pending=1, submit_timeout=WAIT)
    gate = r.gate()
    r.submit("a", r.job(gate))
    doomed = r.submit("a", lambda: None)
    submitter, outcome = in_thread(lambda: r.submit("a", lambda: "admitted"))
    assert_still_waiting(submitter)
    # Retiring the pending job, not finishing the running one, frees room.
    assert doomed.cancel()
    submitter.join(timeout=WAIT)
    assert not submitter.is_alive()
    assert not gate.is_open()
    gate.open()
    assert outcome[0].result(timeout=WAIT) == "admitted"


@pytest.mark.parametrize("bound", ["max_shards", "max_pending"])
def test_bounds_hold_under_concurrent_submitters(make_runner: MakeRunner, bound: str) -> None:
    # Four threads submit on 20 keys against a bound of 3: submits wait for
    # room and all get in; no snapshot ever shows the bound exceeded.
    r = make_runner(2, submit_timeout=WAIT, **{bound: 3})
    stop = threading.Event()
    snapshots: list[tuple[int, int]] = []

    def watch() -> None:
        while True:  # at least one snapshot, even if the load is over first
            stats = r.stats()
            snapshots.append((stats.active_shards, stats.pending))
            if stop.is_set():
                return

    futures: list[Future[Any]] = []
    lock = threading.Lock()

    def submit_many(n: int) -> None:
        for i in range(50):
            future = r.submit(f"k{(n * 50 + i) % 20}", lambda: None)
            with lock:
                futures.append(future)

    watcher = threading.Thread(target=watch)
    submitters = [threading.Thread(target=submit_many, args=(n,)) for n in range(4)]
    watcher.start()
    try:
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join(WAIT)
        for future in futures:
            future.result(timeout=WAIT)
    finally:
        stop.set()
        watcher.join(WAIT)
    assert len(futures) == 200
    assert snapshots
    index = 0 if bound == "max_shards" else 1
    assert max(snapshot[index] for snapshot in snapshots) <= 3
