"""Points 4 and 5: bounded shards and backpressure; a timed-out submit leaves no trace."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from keyed_dispatch import DispatcherClosed, ShardsExhausted, SubmitTimeout
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_a_shard_lives_only_while_its_key_has_work(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(4)
    assert d.stats().active_shards == 0
    gate = gates.new()
    futures = [d.submit(key, gate.wait) for key in "abc"] + [d.submit("a", lambda: None)]
    assert d.stats().active_shards == 3
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    wait_until(lambda: d.stats().active_shards == 0, what="idle keys to free their shards")


def test_new_key_beyond_max_shards_raises_shards_exhausted(
    make_dispatcher: MakeDispatcher, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dispatcher(4, max_shards=2, submit_timeout=0.01)
    gate = gates.new()
    d.submit("a", gate.wait)
    d.submit("b", gate.wait)
    before = d.stats()
    ran = threading.Event()
    with caplog.at_level(logging.ERROR, logger="keyed_dispatch"), pytest.raises(ShardsExhausted) as info:
        d.submit("c", ran.set)
    assert isinstance(info.value, SubmitTimeout)
    assert isinstance(info.value, TimeoutError)
    assert [r.getMessage() for r in caplog.records] == ["shard pool exhausted: 2 shards"]
    # No trace: nothing admitted, no shard created.
    assert d.stats() == before
    gate.set()
    wait_until(lambda: d.stats().active_shards == 0, what="shards to free")
    assert not ran.is_set()


def test_live_keys_are_never_blocked_by_the_shard_bound(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # submit_timeout=0 would raise at once if the submit waited for room.
    d = make_dispatcher(4, max_shards=2, submit_timeout=0)
    gate = gates.new()
    futures: list[Future[Any]] = [d.submit("a", gate.wait), d.submit("b", gate.wait)]
    futures += [d.submit("a", lambda: None), d.submit_multi(["b", "a"], lambda: None)]
    with pytest.raises(ShardsExhausted):
        d.submit_multi(["a", "c"], lambda: None)
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)


def test_a_waiting_submit_gets_the_shard_that_frees(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(4, max_shards=1, submit_timeout=WAIT)
    gate = gates.new()
    first = d.submit("a", gate.wait)
    results: list[Future[Any]] = []
    submitter = threading.Thread(target=lambda: results.append(d.submit("b", lambda: "b ran")))
    submitter.start()
    # The submit cannot return while "a" holds the only shard.
    submitter.join(timeout=0.05)
    assert submitter.is_alive()
    assert d.stats().submitted == 1
    gate.set()
    submitter.join(timeout=WAIT)
    assert results[0].result(timeout=WAIT) == "b ran"
    assert first.result(timeout=WAIT) is True


def test_job_with_more_keys_than_max_shards_fails_at_once(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1, max_shards=2, submit_timeout=WAIT)
    with pytest.raises(ShardsExhausted, match="can never fit"):
        d.submit_multi(["a", "b", "c"], lambda: None)
    assert d.stats().submitted == 0


def test_max_pending_raises_submit_timeout_and_leaves_no_trace(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(4, max_pending=2, submit_timeout=0.01)
    gate = gates.new()
    futures: list[Future[Any]] = [
        d.submit("a", gate.wait),
        d.submit("a", lambda: None),
        d.submit("a", lambda: None),
    ]
    before = d.stats()
    assert (before.running, before.pending) == (1, 2)
    ran = threading.Event()
    for key in ("a", "new-key"):
        with pytest.raises(SubmitTimeout) as info:
            d.submit(key, ran.set)
        assert not isinstance(info.value, ShardsExhausted)
        assert d.stats() == before
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    assert not ran.is_set()
    assert d.stats().submitted == 3


def test_backpressure_admits_once_room_frees(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(1, max_pending=1, submit_timeout=WAIT)
    gate = gates.new()
    futures: list[Future[Any]] = [d.submit("a", gate.wait), d.submit("b", lambda: 1)]

    def submit_more() -> None:
        futures.append(d.submit("c", lambda: 2))

    submitter = threading.Thread(target=submit_more)
    submitter.start()
    submitter.join(timeout=0.05)
    assert submitter.is_alive()
    gate.set()
    submitter.join(timeout=WAIT)
    assert [f.result(timeout=WAIT) for f in futures] == [True, 1, 2]


def test_submit_waiting_for_room_raises_dispatcher_closed_on_shutdown(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(1, max_pending=1, submit_timeout=WAIT)
    gate = gates.new()
    d.submit("a", gate.wait)
    d.submit("a", lambda: None)
    errors: list[BaseException] = []

    def submit_more() -> None:
        try:
            d.submit("a", lambda: None)
        except DispatcherClosed as exc:
            errors.append(exc)

    submitter = threading.Thread(target=submit_more)
    submitter.start()
    submitter.join(timeout=0.05)
    assert submitter.is_alive()
    d.shutdown(wait=False)
    submitter.join(timeout=WAIT)
    assert len(errors) == 1
    gate.set()
    d.shutdown(wait=True)
    assert d.stats().submitted == 2


def test_a_cancel_makes_room_for_a_waiting_submit(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(1, max_pending=1, submit_timeout=WAIT)
    gate = gates.new()
    d.submit("a", gate.wait)
    doomed = d.submit("a", lambda: None)
    results: list[Future[Any]] = []
    submitter = threading.Thread(target=lambda: results.append(d.submit("a", lambda: "admitted")))
    submitter.start()
    submitter.join(timeout=0.05)
    assert submitter.is_alive()
    # Retiring the pending job, not finishing the running one, frees room.
    assert doomed.cancel()
    submitter.join(timeout=WAIT)
    assert not submitter.is_alive()
    assert not gate.is_set()
    gate.set()
    assert results[0].result(timeout=WAIT) == "admitted"


@pytest.mark.parametrize("bound", ["max_shards", "max_pending"])
def test_bounds_hold_under_concurrent_submitters(make_dispatcher: MakeDispatcher, bound: str) -> None:
    # Four threads submit on 20 keys against a bound of 3: submits wait for
    # room and all get in; no snapshot ever shows the bound exceeded.
    d = make_dispatcher(2, submit_timeout=WAIT, **{bound: 3})
    stop = threading.Event()
    snapshots: list[tuple[int, int]] = []

    def watch() -> None:
        while True:  # at least one snapshot, even if the load is over first
            stats = d.stats()
            snapshots.append((stats.active_shards, stats.pending))
            if stop.is_set():
                return

    futures: list[Future[Any]] = []
    lock = threading.Lock()

    def submit_many(n: int) -> None:
        for i in range(50):
            future = d.submit(f"k{(n * 50 + i) % 20}", lambda: None)
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
