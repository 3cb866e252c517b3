"""The latency histograms: buckets, snapshots, quantiles, and what the engine records (a fake clock)."""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyed_dispatch import DispatcherConfig, HistogramSnapshot, KeyHalted
from keyed_dispatch._engine import COMPLETED, FAILED, MAX_FAILURE_TYPES, Engine, Job
from keyed_dispatch._histogram import BOUNDS, Recorder

seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


def job(*keys: Hashable, block: bool = False) -> Job:
    fn: Any = None if block else (lambda: None)
    return Job(tuple(keys), fn, (), {}, None)


def recorded(*values: float) -> HistogramSnapshot:
    recorder = Recorder()
    for value in values:
        recorder.add(value)
    return recorder.snapshot()


def test_bounds_are_one_two_five_per_decade_from_a_microsecond_to_100_seconds() -> None:
    assert BOUNDS[:4] == (1e-6, 2e-6, 5e-6, 1e-5)
    assert BOUNDS[-4:] == (10.0, 20.0, 50.0, 100.0)
    assert len(BOUNDS) == 25
    assert list(BOUNDS) == sorted(BOUNDS)
    assert {round(b / BOUNDS[i - 1], 6) for i, b in enumerate(BOUNDS) if i} == {2.0, 2.5}
    # The text of a bound is the decimal it stands for (Prometheus le labels).
    assert [repr(b) for b in BOUNDS[7:10]] == ["0.0002", "0.0005", "0.001"]


def test_a_value_goes_to_the_first_bucket_whose_bound_is_at_least_it() -> None:
    snap = recorded(0.0, 1e-6, 1.5e-6, 0.001, 0.0011, 100.0, 100.5, 1e6)
    counts = dict(zip((*BOUNDS, math.inf), snap.counts, strict=True))
    assert counts[1e-6] == 2  # 0 and exactly 1 us: le is inclusive
    assert counts[2e-6] == 1
    assert counts[0.001] == 1
    assert counts[0.002] == 1
    assert counts[100.0] == 1
    assert counts[math.inf] == 2  # above the last bound
    assert snap.count == 8 == sum(snap.counts)
    assert snap.sum == pytest.approx(0.0 + 1e-6 + 1.5e-6 + 0.001 + 0.0011 + 100.0 + 100.5 + 1e6)


def test_buckets_are_cumulative_and_end_with_the_count_at_infinity() -> None:
    snap = recorded(0.003, 0.003, 0.04, 250.0)
    buckets = dict(snap.buckets)
    assert buckets[0.002] == 0
    assert buckets[0.005] == 2
    assert buckets[0.05] == 3
    assert buckets[100.0] == 3
    assert snap.buckets[-1] == (math.inf, 4)
    assert len(snap.buckets) == len(BOUNDS) + 1


def test_an_empty_histogram() -> None:
    snap = Recorder().snapshot()
    assert (snap.count, snap.sum) == (0, 0.0)
    assert math.isnan(snap.mean)
    assert math.isnan(snap.quantile(0.99))
    assert snap.buckets[-1] == (math.inf, 0)


def test_quantile_interpolates_within_the_bucket_like_promql() -> None:
    # Four values in (0.002, 0.005]: rank q * 4 is interpolated between the bounds.
    snap = recorded(0.003, 0.003, 0.004, 0.004)
    assert snap.quantile(0.5) == pytest.approx(0.002 + 0.003 * 2 / 4)
    assert snap.quantile(1.0) == pytest.approx(0.005)
    assert snap.quantile(0.0) == pytest.approx(0.002)  # the lower bound of the first non-empty bucket
    # The first bucket's lower bound is 0.
    assert recorded(5e-7, 5e-7).quantile(0.5) == pytest.approx(5e-7)
    # A rank in the unbounded bucket gives the highest finite bound.
    assert recorded(0.001, 500.0).quantile(0.99) == 100.0
    # Across buckets: 9 fast values, 1 slow one.
    snap = recorded(*[0.0001] * 9, 1.5)
    assert snap.quantile(0.5) <= 0.0001
    assert 1.0 < snap.quantile(0.99) <= 2.0
    assert snap.mean == pytest.approx((0.0009 + 1.5) / 10)


@pytest.mark.parametrize("q", [-0.1, 1.01, math.nan])
def test_quantile_refuses_q_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError, match="q must be between 0 and 1"):
        recorded(0.1).quantile(q)


@given(st.lists(seconds, min_size=1, max_size=200), st.floats(min_value=0.0, max_value=1.0))
def test_a_quantile_lies_in_the_bucket_of_the_value_of_that_rank(values: list[float], q: float) -> None:
    snap = recorded(*values)
    estimate = snap.quantile(q)
    # The value of rank ceil(q * n) (at least the first) and its bucket.
    ordered = sorted(values)
    value = ordered[max(0, math.ceil(q * len(values)) - 1)]
    index = bisect_left(BOUNDS, value)
    lower = BOUNDS[index - 1] if index else 0.0
    upper = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1]
    assert lower - 1e-12 <= estimate <= upper + 1e-12
    assert snap.quantile(min(1.0, q + 0.1)) >= estimate - 1e-12  # monotone in q


@given(st.lists(seconds, max_size=100))
def test_counts_add_up_and_the_snapshot_is_frozen_and_json_safe(values: list[float]) -> None:
    recorder = Recorder()
    for value in values:
        recorder.add(value)
    snap = recorder.snapshot()
    recorder.add(1.0)
    assert snap.count == len(values) == sum(snap.counts)
    assert snap.count == snap.buckets[-1][1]
    assert recorder.snapshot().count == len(values) + 1
    assert json.loads(json.dumps(snap.__dict__)) == {
        "count": snap.count,
        "sum": snap.sum,
        "bounds": list(BOUNDS),
        "counts": list(snap.counts),
    }


# -- what the engine records (a fake clock) ------------------------------------------------------


def test_the_engine_records_no_histogram_unless_asked() -> None:
    engine = Engine(halt_on_error=False)
    a = job("k")
    engine.admit(a, 0.0)
    engine.release(engine.take(1.0), COMPLETED)  # type: ignore[arg-type]
    stats = engine.stats(DispatcherConfig(), workers=0, idle_workers=0, closed=False)
    assert (stats.wait, stats.run, engine.timings) == (None, None, None)


def test_the_engine_records_each_wait_once_at_the_first_start() -> None:
    engine = Engine(halt_on_error=False, metrics=True)
    a, b, c, block = job("k"), job("k"), job("other"), job("k", block=True)
    assert engine.admit_started(a, 0.0)  # started at once: waited 0
    engine.admit(b, 0.001)
    engine.admit(block, 0.002)
    engine.admit(c, 0.5)
    assert engine.take(0.503) is c  # waited 3 ms
    assert engine.finish(a, COMPLETED, None, 0.041) is b  # waited 40 ms
    engine.release(b, COMPLETED)
    assert engine.take_block(7.002) is block  # waited 7 s
    timings = engine.timings
    assert timings is not None
    wait = timings.wait.snapshot()
    assert wait.count == 4
    assert wait.sum == pytest.approx(0.0 + 0.003 + 0.04 + 7.0)
    assert dict(wait.buckets)[1e-6] == 1
    assert dict(wait.buckets)[0.005] == 2
    assert dict(wait.buckets)[0.05] == 3
    assert dict(wait.buckets)[10.0] == 4
    assert timings.run.snapshot().count == 0  # runners record run times


def test_a_job_that_fails_instead_of_starting_records_no_wait() -> None:
    engine = Engine(halt_on_error=True, metrics=True)
    a, b = job("k"), job("k")
    engine.admit(a, 0.0)
    engine.admit(b, 0.0)
    assert engine.take(0.01) is a
    engine.release(a, FAILED, ValueError("boom"))
    taken = engine.take(0.02)
    assert taken is b
    assert isinstance(b.error, KeyHalted)
    engine.release(b, FAILED)
    timings = engine.timings
    assert timings is not None
    assert timings.wait.snapshot().count == 1


def test_failures_are_counted_by_type_name_bounded() -> None:
    engine = Engine(halt_on_error=True)
    first = job("k")
    engine.admit(first, 0.0)
    engine.release(engine.take(0.0), FAILED, ValueError("bad"))  # type: ignore[arg-type]
    halted = job("k")  # fails with KeyHalted, passed as job.error
    engine.admit(halted, 0.0)
    engine.release(engine.take(0.0), FAILED)  # type: ignore[arg-type]
    kinds = [type(f"Error{i}", (Exception,), {}) for i in range(MAX_FAILURE_TYPES + 3)]
    for kind in kinds:
        engine.resume("k")
        j = job("k")
        engine.admit(j, 0.0)
        engine.release(engine.take(0.0), FAILED, kind())  # type: ignore[arg-type]
    failures = dict(engine.stats(DispatcherConfig(), workers=0, idle_workers=0, closed=False).failures)
    assert failures["ValueError"] == 1
    assert failures["KeyHalted"] == 1
    assert len(failures) == MAX_FAILURE_TYPES + 1  # the first 32 names, and "<other>"
    assert failures["<other>"] == 5
    assert sum(failures.values()) == len(kinds) + 2
