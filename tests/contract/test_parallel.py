"""Point 2: disjoint keys run in parallel up to max_workers; work-conserving.

(For asyncio, max_workers is max_concurrency and a worker is a running job.)
How the thread runner shares its workers between a hot key and the others
is in tests/thread/test_parallel.py.
"""

from __future__ import annotations

import pytest

from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, wait_until


@pytest.mark.parametrize("max_workers", [1, 2, 5])
def test_disjoint_keys_run_concurrently_up_to_max_workers(make_runner: MakeRunner, max_workers: int) -> None:
    # The barrier only opens if max_workers jobs run at the same time.
    r = make_runner(max_workers)
    job = r.job(r.barrier(max_workers))
    futures = [r.submit(f"k{i}", job) for i in range(max_workers * 3)]
    for future in futures:
        future.result(timeout=WAIT)
    assert r.stats().workers <= max_workers


def test_never_more_than_max_workers_jobs_at_once(make_runner: MakeRunner) -> None:
    r = make_runner(3)
    gate = r.gate()
    job = r.job(gate)
    futures = [r.submit(f"k{i}", job) for i in range(7)]
    wait_until(lambda: r.stats().running == 3, what="3 running jobs")
    stats = r.stats()
    assert (stats.workers, stats.running, stats.pending) == (3, 3, 4)
    gate.open()
    for future in futures:
        future.result(timeout=WAIT)
    assert r.stats().workers <= 3


def test_a_freed_worker_takes_the_next_runnable_job_at_once(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gates = [r.gate() for _ in range(3)]
    futures = [r.submit(i, r.job(gate, lambda i=i: i)) for i, gate in enumerate(gates)]
    assert gates[0].entered.wait(WAIT)
    assert gates[1].entered.wait(WAIT)
    stats = r.stats()
    assert (stats.workers, stats.running, stats.pending) == (2, 2, 1)
    assert not gates[2].entered.is_set()
    gates[1].open()
    assert gates[2].entered.wait(WAIT)
    assert r.stats().workers == 2
    gates[0].open()
    gates[2].open()
    assert [f.result(timeout=WAIT) for f in futures] == [0, 1, 2]


def test_jobs_made_runnable_together_start_together(make_runner: MakeRunner) -> None:
    # Retiring one job can make several runnable at once: each must get a
    # worker without waiting for a later submit (work conservation).
    r = make_runner(3)
    gate = r.gate()
    first = r.submit_multi(["a", "b", "c"], r.job(gate))
    meet = r.job(r.barrier(3))
    waiting = [r.submit(key, meet) for key in "abc"]
    wait_until(lambda: r.stats().pending == 3, what="three jobs queued")
    gate.open()
    first.result(timeout=WAIT)
    for future in waiting:
        future.result(timeout=WAIT)


def test_an_idle_worker_takes_runnable_work(make_runner: MakeRunner) -> None:
    # One worker busy on "a", one idle: a job on "b" must not wait for "a".
    r = make_runner(2)
    r.submit("x", lambda: None).result(timeout=WAIT)
    gate = r.gate()
    blocked = r.submit("a", r.job(gate, lambda: "a ran"))
    r.submit("b", gate.open).result(timeout=WAIT)
    assert blocked.result(timeout=WAIT) == "a ran"


def test_hot_backlog_leaves_other_keys_to_free_workers(make_runner: MakeRunner) -> None:
    # The hot key's head job waits for a gate that only the cold job opens:
    # this finishes only if the cold job runs while the hot backlog is queued.
    r = make_runner(2)
    gate = r.gate()
    hot = [r.submit("hot", r.job(gate))] + [r.submit("hot", lambda: None) for _ in range(100)]
    cold = r.submit("cold", gate.open)
    cold.result(timeout=WAIT)
    for future in hot:
        future.result(timeout=WAIT)
