"""Point 3: multi-key jobs are admitted atomically and cannot deadlock."""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable

import pytest

from keyed_dispatch.testing import OrderRecorder
from tests.contract.conftest import MakeRunner
from tests.contract.runners import Runner
from tests.helpers import WAIT, wait_until


def test_multi_key_job_waits_for_every_key(runner: Runner) -> None:
    gate_a, gate_b = runner.gate(), runner.gate()
    started = threading.Event()
    on_a = runner.submit("a", runner.job(gate_a))
    on_b = runner.submit("b", runner.job(gate_b))
    both = runner.submit_multi(["a", "b"], started.set)
    gate_a.open()
    on_a.result(timeout=WAIT)
    # "a" is free now, "b" is not: the job still waits.
    wait_until(lambda: runner.stats().completed == 1, what="the job on a to retire")
    assert not started.is_set()
    assert runner.stats().pending == 1
    gate_b.open()
    both.result(timeout=WAIT)
    on_b.result(timeout=WAIT)


def test_admission_is_atomic_across_keys(runner: Runner) -> None:
    # The multi-key job queues on "b" at admission, although it is waiting
    # for "a": a later job on the free key "b" must wait behind it.
    gate = runner.gate()
    rec = OrderRecorder()
    rec.submit(runner, ["a"], runner.job(gate))
    both = rec.submit(runner, ["a", "b"], runner.job())
    later_b = rec.submit(runner, ["b"], runner.job())
    assert gate.entered.wait(WAIT)
    stats = runner.stats()
    assert (stats.running, stats.pending, stats.active_shards) == (1, 2, 2)
    assert not later_b.done()
    gate.open()
    later_b.result(timeout=WAIT)
    both.result(timeout=WAIT)
    rec.check()
    assert [job.job_id for job in rec.ran()] == [0, 1, 2]


def test_opposite_key_orders_never_deadlock(runner: Runner) -> None:
    # The lock-manager failure mode: two jobs taking {a, b} in opposite
    # orders. Admission order makes a cycle impossible.
    rec = OrderRecorder()
    job = runner.job(0)
    futures = [rec.submit(runner, ["a", "b"] if i % 2 else ["b", "a"], job) for i in range(200)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()


def test_random_overlapping_multi_key_jobs_all_finish_in_order(runner: Runner) -> None:
    rng = random.Random(1234)
    keys: list[Hashable] = [f"k{i}" for i in range(6)]
    rec = OrderRecorder()
    job = runner.job(0)
    futures = [rec.submit(runner, rng.sample(keys, rng.randint(1, 4)), job) for _ in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()


def test_duplicate_keys_collapse(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    future = r.submit_multi(["a", "a", "b", "a"], r.job(gate, lambda: "done"))
    wait_until(lambda: r.stats().running == 1, what="the job to start")
    assert r.stats().active_shards == 2
    gate.open()
    assert future.result(timeout=WAIT) == "done"
    # A duplicate would have been queued twice and never released.
    wait_until(lambda: r.stats().active_shards == 0, what="the shards to free")


def test_single_key_collection_behaves_like_submit(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    out: list[int] = []
    futures = [
        r.submit("k", out.append, 0),
        r.submit_multi({"k"}, out.append, 1),
        r.submit("k", out.append, 2),
    ]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == [0, 1, 2]


@pytest.mark.parametrize("keys", [[], (), set(), iter([])])
def test_empty_key_set_is_a_value_error(make_runner: MakeRunner, keys: object) -> None:
    r = make_runner(1)
    with pytest.raises(ValueError, match="at least one key"):
        r.submit_multi(keys, print)  # type: ignore[arg-type]
    assert r.stats().submitted == 0


def test_multi_key_job_args_and_kwargs(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    future = r.submit_multi(("x", "y"), lambda a, *, b: a + b, 40, b=2)
    assert future.result(timeout=WAIT) == 42
