"""Point 3: multi-key jobs are admitted atomically and cannot deadlock."""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable

import pytest

from keyed_dispatch.testing import OrderRecorder
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_multi_key_job_waits_for_every_key(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(4)
    gate_a, gate_b = gates.new(), gates.new()
    started = threading.Event()
    on_a = d.submit("a", gate_a.wait)
    on_b = d.submit("b", gate_b.wait)
    both = d.submit_multi(["a", "b"], started.set)
    gate_a.set()
    on_a.result(timeout=WAIT)
    # "a" is free now, "b" is not: the job still waits.
    wait_until(lambda: d.stats().completed == 1, what="the job on a to retire")
    assert not started.is_set()
    assert d.stats().pending == 1
    gate_b.set()
    both.result(timeout=WAIT)
    on_b.result(timeout=WAIT)


def test_admission_is_atomic_across_keys(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    # The multi-key job queues on "b" at admission, although it is waiting
    # for "a": a later job on the free key "b" must wait behind it.
    d = make_dispatcher(4)
    gate = gates.new()
    rec = OrderRecorder()
    rec.submit(d, ["a"], gate.wait)
    both = rec.submit(d, ["a", "b"])
    later_b = rec.submit(d, ["b"])
    stats = d.stats()
    assert (stats.running, stats.pending, stats.active_shards) == (1, 2, 2)
    assert not later_b.done()
    gate.set()
    later_b.result(timeout=WAIT)
    both.result(timeout=WAIT)
    rec.check()
    assert [job.job_id for job in rec.ran()] == [0, 1, 2]


def test_opposite_key_orders_never_deadlock(make_dispatcher: MakeDispatcher) -> None:
    # The lock-manager failure mode: two jobs taking {a, b} in opposite
    # orders. Admission order makes a cycle impossible.
    d = make_dispatcher(4)
    rec = OrderRecorder()
    futures = [rec.submit(d, ["a", "b"] if i % 2 else ["b", "a"]) for i in range(200)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()


def test_random_overlapping_multi_key_jobs_all_finish_in_order(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(4)
    rng = random.Random(1234)
    keys: list[Hashable] = [f"k{i}" for i in range(6)]
    rec = OrderRecorder()
    futures = [rec.submit(d, rng.sample(keys, rng.randint(1, 4))) for _ in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()


def test_duplicate_keys_collapse(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    future = d.submit_multi(["a", "a", "b", "a"], gate.wait)
    wait_until(lambda: d.stats().running == 1, what="the job to start")
    assert d.stats().active_shards == 2
    gate.set()
    assert future.result(timeout=WAIT) is True
    # A duplicate would have been queued twice and never released.
    wait_until(lambda: d.stats().active_shards == 0, what="the shards to free")


def test_single_key_collection_behaves_like_submit(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    out: list[int] = []
    futures = [
        d.submit("k", out.append, 0),
        d.submit_multi({"k"}, out.append, 1),
        d.submit("k", out.append, 2),
    ]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == [0, 1, 2]


@pytest.mark.parametrize("keys", [[], (), set(), iter([])])
def test_empty_key_set_is_a_value_error(make_dispatcher: MakeDispatcher, keys: object) -> None:
    d = make_dispatcher(1)
    with pytest.raises(ValueError, match="at least one key"):
        d.submit_multi(keys, print)  # type: ignore[arg-type]
    assert d.stats().submitted == 0


def test_multi_key_job_args_and_kwargs(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    future = d.submit_multi(("x", "y"), lambda a, *, b: a + b, 40, b=2)
    assert future.result(timeout=WAIT) == 42
