"""How the thread runner shares its workers: a hot key keeps its worker, but
yields to other keys after a bounded batch (parallelism and work
conservation themselves are in tests/contract/test_parallel.py)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import Future
from typing import Any

from keyed_dispatch import KeyedDispatcher
from keyed_dispatch._engine import HOT_BATCH
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


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


def test_job_ids_stay_unique_when_a_hot_key_yields_its_turn(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # A hot key that used up its batch is queued behind a waiting job with a
    # place between two admission numbers; its job id must not change.
    d = make_dispatcher(1)
    gate = gates.new()
    ids: list[str] = []

    def record() -> None:
        context = d.current_job()
        assert context is not None
        ids.append(context.job_id)

    d.submit("gate", gate.wait, WAIT)
    futures = [d.submit("hot", record) for _ in range(3 * HOT_BATCH)]
    futures += [d.submit(f"cold-{i}", record) for i in range(3)]
    gate.set()
    for future in futures:
        future.result(WAIT)
    assert len(set(ids)) == len(ids) == len(futures)
    assert all(job_id.rsplit("-", 1)[1].isdigit() for job_id in ids)


def _warm(d: KeyedDispatcher, workers: int) -> None:
    # Start ``workers`` threads (jobs that meet at a barrier) and wait until
    # all of them are idle again.
    meet = threading.Barrier(workers, timeout=WAIT)
    for future in [d.submit(f"warm-{i}", meet.wait) for i in range(workers)]:
        future.result(WAIT)
    wait_until(lambda: d.stats().idle_workers == workers, what="every worker idle")


def test_jobs_a_release_makes_runnable_wake_idle_workers(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # A multi-key job's end makes three jobs runnable: the finishing worker
    # takes one, and the two idle workers must run the others meanwhile (the
    # three meet at a barrier), without a new thread.
    d = make_dispatcher(3)
    _warm(d, 3)
    gate = gates.new()
    first = d.submit_multi(["a", "b", "c"], gate.wait, WAIT)
    meet = threading.Barrier(3, timeout=WAIT)
    followers = [d.submit(key, meet.wait) for key in "abc"]
    wait_until(lambda: (d.stats().running, d.stats().pending) == (1, 3), what="the followers queued")
    gate.set()
    first.result(WAIT)
    for future in followers:
        future.result(WAIT)
    assert d.stats().workers == 3
    wait_until(lambda: d.stats().idle_workers == 3, what="every worker idle again")


def test_workers_sent_for_jobs_are_all_back_idle_after_a_burst(make_dispatcher: MakeDispatcher) -> None:
    # Many releases at once, with workers idle: a woken worker may find its
    # job taken by a busy one. None is lost: all end idle, and each key's
    # jobs ran, in order.
    d = make_dispatcher(4)
    _warm(d, 4)
    rng = random.Random(7)
    keys = [f"k{n}" for n in range(6)]
    seen: dict[str, list[int]] = {key: [] for key in keys}
    expected: dict[str, list[int]] = {key: [] for key in keys}

    def record(n: int, keyset: list[str]) -> None:
        for key in keyset:
            seen[key].append(n)

    futures = []
    for n in range(2000):
        keyset = rng.sample(keys, rng.choice((1, 2, 3)))
        for key in keyset:
            expected[key].append(n)
        futures.append(d.submit_multi(keyset, record, n, keyset))
    for future in futures:
        future.result(WAIT)
    assert seen == expected
    wait_until(lambda: d.stats().idle_workers == d.stats().workers, what="every worker idle again")
    assert d.submit("after", lambda: "ran").result(WAIT) == "ran"


def test_shutdown_right_after_a_release_waits_for_the_woken_workers(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    # Workers are on their way to the jobs a release made runnable when the
    # shutdown starts: it still runs those jobs and joins every thread.
    d = make_dispatcher(4)
    _warm(d, 4)
    gate = gates.new()
    first = d.submit_multi(["a", "b", "c", "d"], gate.wait, WAIT)
    followers = [d.submit(key, lambda key=key: key) for key in "abcd"]
    gate.set()
    d.shutdown(wait=True)
    assert first.done()
    assert [future.result(0) for future in followers] == list("abcd")
    assert d.stats().workers == 0
