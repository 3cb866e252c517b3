"""Point 2: disjoint keys run in parallel up to max_workers; work-conserving."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

from keyed_dispatch._engine import HOT_BATCH
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


@pytest.mark.parametrize("max_workers", [1, 2, 5])
def test_disjoint_keys_run_concurrently_up_to_max_workers(
    make_dispatcher: MakeDispatcher, max_workers: int
) -> None:
    # The barrier only opens if max_workers jobs run at the same time.
    d = make_dispatcher(max_workers)
    barrier = threading.Barrier(max_workers)
    futures = [d.submit(f"k{i}", barrier.wait, WAIT) for i in range(max_workers * 3)]
    for future in futures:
        future.result(timeout=WAIT)
    assert d.stats().workers <= max_workers


def test_never_more_than_max_workers_threads(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(3)
    gate = gates.new()
    futures = [d.submit(f"k{i}", gate.wait) for i in range(7)]
    wait_until(lambda: d.stats().running == 3, what="3 running jobs")
    stats = d.stats()
    assert (stats.workers, stats.running, stats.pending) == (3, 3, 4)
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    assert d.stats().workers <= 3


def test_jobs_made_runnable_together_start_together(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # Retiring one job can make several runnable at once: each must get a
    # worker without waiting for a later submit (work conservation).
    d = make_dispatcher(3)
    gate = gates.new()
    barrier = threading.Barrier(3)
    first = d.submit_multi(["a", "b", "c"], gate.wait)
    waiting = [d.submit(key, barrier.wait, WAIT) for key in "abc"]
    wait_until(lambda: d.stats().pending == 3, what="three jobs queued")
    gate.set()
    first.result(timeout=WAIT)
    for future in waiting:
        future.result(timeout=WAIT)


def test_an_idle_worker_takes_runnable_work(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # One worker busy on "a", one idle: a job on "b" must not wait for "a".
    d = make_dispatcher(2)
    warm = d.submit("x", lambda: None)
    warm.result(timeout=WAIT)
    gate = gates.new()
    blocked = d.submit("a", gate.wait)
    d.submit("b", gate.set).result(timeout=WAIT)
    assert blocked.result(timeout=WAIT) is True


def test_hot_key_does_not_starve_a_cold_key_with_one_worker(make_dispatcher: MakeDispatcher) -> None:
    # A hot key that keeps feeding itself: each of its jobs submits the
    # next. With a single worker, the cold job admitted meanwhile runs before
    # the hot jobs admitted after it.
    d = make_dispatcher(1)
    order: list[str] = []
    cold_submitted = threading.Event()
    done = threading.Event()
    futures: list[Future[Any]] = []

    def hot(n: int) -> None:
        order.append(f"hot{n}")
        if n == 0:
            cold_submitted.wait(WAIT)
        if n < 20:
            futures.append(d.submit("hot", hot, n + 1))
        else:
            done.set()

    d.submit("hot", hot, 0)
    wait_until(lambda: order == ["hot0"], what="the hot chain to start")
    futures.append(d.submit("cold", order.append, "cold"))
    cold_submitted.set()
    assert done.wait(WAIT)
    for future in futures:
        future.result(timeout=WAIT)
    assert order.index("cold") == 1, order


def test_hot_backlog_leaves_other_keys_to_free_workers(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # The hot key's head job waits for a gate that only the cold job opens:
    # this finishes only if the cold job runs while the hot backlog is queued.
    d = make_dispatcher(2)
    gate = gates.new()
    hot = [d.submit("hot", gate.wait)] + [d.submit("hot", lambda: None) for _ in range(100)]
    cold = d.submit("cold", gate.set)
    cold.result(timeout=WAIT)
    for future in hot:
        future.result(timeout=WAIT)


def test_hot_key_chain_keeps_its_worker_without_a_hand_off(make_dispatcher: MakeDispatcher) -> None:
    # With workers free, a key's next job is started by the worker that ran
    # the previous one (its chain is the critical path): one thread suffices.
    d = make_dispatcher(4)
    threads: set[str] = set()
    futures = [d.submit("hot", lambda: threads.add(threading.current_thread().name)) for _ in range(50)]
    for future in futures:
        future.result(timeout=WAIT)
    assert len(threads) == 1
    assert d.stats().workers == 1


def test_backlogged_hot_key_yields_after_a_bounded_batch(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # The one worker is busy; the hot key has a backlog of 200 jobs, then a
    # cold job arrives. Once the worker is free, the hot key may run a batch
    # of jobs in a row, but the cold job must not wait for the whole backlog.
    d = make_dispatcher(1)
    gate = gates.new()
    order: list[str] = []
    futures: list[Future[Any]] = [d.submit("hot", gate.wait)]
    futures += [d.submit("hot", order.append, "hot") for _ in range(200)]
    futures.append(d.submit("cold", order.append, "cold"))
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    assert order.index("cold") <= HOT_BATCH, order.index("cold")


def test_hot_key_gives_up_one_turn_per_batch_not_its_place(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # One worker; the hot key's backlog was admitted before five cold jobs.
    # After each batch the hot key lets the oldest waiting job go first and
    # then carries on: it is not sent behind every waiting job, so a hot key
    # that is the critical path loses one turn per batch, not a round.
    d = make_dispatcher(1)
    gate = gates.new()
    order: list[str] = []
    futures: list[Future[Any]] = [d.submit("hot", gate.wait)]
    futures += [d.submit("hot", order.append, "hot") for _ in range(100)]
    futures += [d.submit(f"cold{n}", order.append, f"cold{n}") for n in range(5)]
    gate.set()
    for future in futures:
        future.result(timeout=WAIT)
    cold_positions = [order.index(f"cold{n}") for n in range(5)]
    # The gate job was the first of the hot key's run: HOT_BATCH - 1 more hot
    # jobs, then cold0; then HOT_BATCH hot jobs before each next cold job.
    first = HOT_BATCH - 1
    assert cold_positions == [first + n * (HOT_BATCH + 1) for n in range(5)], cold_positions
