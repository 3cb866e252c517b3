"""keyed_dispatch.testing: the recorder catches each kind of violation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import given, settings

from keyed_dispatch import KeyHalted, ShardsExhausted, StartTimeout
from keyed_dispatch.testing import (
    JobSpec,
    OrderRecorder,
    RecordedJob,
    async_failing,
    failing,
    job_specs,
    workloads,
)
from tests.helpers import WAIT, MakeDispatcher


def history(*jobs: RecordedJob) -> OrderRecorder:
    rec = OrderRecorder()
    rec.jobs.extend(jobs)
    return rec


def job(
    job_id: int, keys: tuple[Hashable, ...], admitted: int | None, runs: list[tuple[int, int]]
) -> RecordedJob:
    return RecordedJob(
        job_id=job_id,
        keys=keys,
        admitted=admitted,
        starts=[start for start, _ in runs],
        ends=[end for _, end in runs],
    )


def test_a_good_history_passes() -> None:
    history(
        job(0, ("a",), 0, [(0, 1)]),
        job(1, ("b",), 1, [(2, 5)]),
        job(2, ("a", "b"), 2, [(6, 7)]),
        job(3, ("c",), 3, [(3, 4)]),  # another key: may overlap anything
    ).check()


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        # Same-key overlap: job 1 started before job 0 ended.
        (
            [job(0, ("a",), 0, [(0, 3)]), job(1, ("a",), 1, [(1, 2)])],
            "overlap on key 'a': job 1 started before job 0 ended",
        ),
        # Overlap through one key of a multi-key job.
        ([job(0, ("a", "b"), 0, [(0, 3)]), job(1, ("c", "b"), 1, [(2, 4)])], "overlap on key 'b'"),
        # Order inversion: job 1 (admitted second) started first.
        ([job(0, ("a",), 0, [(2, 3)]), job(1, ("a",), 1, [(0, 1)])], "order inversion on key 'a': job 1"),
        # Never ran.
        ([job(0, ("a",), 0, [])], "job 0 on ('a',) was admitted but never ran"),
        # Ran twice.
        ([job(0, ("a",), 0, [(0, 1), (2, 3)])], "job 0 on ('a',) ran 2 times"),
        # Started, never ended.
        ([RecordedJob(0, ("a",), admitted=0, starts=[0])], "job 0 on ('a',) started but never ended"),
        # Ran without admission.
        ([job(0, ("a",), None, [(0, 1)])], "job 0 on ('a',) ran but was never admitted"),
    ],
)
def test_each_violation_is_named(jobs: list[RecordedJob], message: str) -> None:
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        history(*jobs).check()


def test_expected_not_to_run_but_ran() -> None:
    bad = job(0, ("a",), 0, [(0, 1)])
    bad.expect_run = False
    with pytest.raises(AssertionError, match="ran but must not have"):
        history(bad).check()
    quiet = job(1, ("a",), 1, [])
    quiet.expect_run = False
    history(quiet).check()


def test_a_job_never_admitted_and_never_run_is_fine() -> None:
    history(job(0, ("a",), None, [])).check()


def test_a_job_declared_to_run_must_run_even_without_admission() -> None:
    rec = OrderRecorder()
    wrapped = rec.wrap(["a"])
    rec.expect(wrapped, ran=True)
    with pytest.raises(AssertionError, match="was expected to run but never ran"):
        rec.check()
    wrapped()
    rec.check()


def test_an_unfinished_future_is_reported() -> None:
    pending = job(0, ("a",), 0, [])
    pending.future = Future()
    with pytest.raises(AssertionError, match="has not finished"):
        history(pending).check()


def finished(result: Any = None, error: BaseException | None = None, cancelled: bool = False) -> Future[Any]:
    future: Future[Any] = Future()
    if cancelled:
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


@pytest.mark.parametrize(
    ("future", "ran"),
    [
        (finished(1), True),
        (finished(error=ValueError()), True),
        (finished(cancelled=True), False),
        (finished(error=StartTimeout()), False),
        (finished(error=KeyHalted("k")), False),
    ],
)
def test_expectations_from_futures(future: Future[Any], ran: bool) -> None:
    rec = OrderRecorder()
    wrapped = rec.wrap(["k"])
    rec.admitted(wrapped)
    rec.expect_from_future(wrapped, future)
    assert rec.jobs[0].expect_run is ran
    if ran:
        wrapped()
    rec.check()
    # The same outcome, derived by check() from a kept future.
    derived = job(0, ("k",), 0, [(0, 1)] if ran else [])
    derived.future = future
    history(derived).check()
    wrong = job(0, ("k",), 0, [] if ran else [(0, 1)])
    wrong.future = future
    with pytest.raises(AssertionError):
        history(wrong).check()


def test_wrap_records_start_end_and_keeps_results_and_errors() -> None:
    rec = OrderRecorder()
    add = rec.wrap(["a", "a", "b"], lambda x, *, y: x + y)
    assert add(1, y=2) == 3
    boom = rec.wrap(["a"], failing("boom"))
    with pytest.raises(ValueError, match="boom"):
        boom()
    noop = rec.wrap(["c"])
    assert noop() is None
    for wrapped in (add, boom, noop):
        rec.admitted(wrapped)
    rec.check()
    first = rec.jobs[0]
    assert first.keys == ("a", "b")
    assert len(first.starts) == len(first.ends) == 1
    assert first.starts[0] < first.ends[0]
    assert [j.job_id for j in rec.ran()] == [0, 1, 2]


def test_wrap_handles_coroutine_functions() -> None:
    rec = OrderRecorder()

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    wrapped = rec.wrap(["a"], double)
    failing_async = rec.wrap(["a"], async_failing("async boom"))

    async def main() -> int:
        result: int = await wrapped(21)
        with pytest.raises(ValueError, match="async boom"):
            await failing_async()
        return result

    assert asyncio.run(main()) == 42
    rec.admitted(wrapped)
    rec.admitted(failing_async)
    rec.check()


class RefusingDispatcher:
    def submit_multi(self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any) -> Any:
        raise ShardsExhausted("full")


def test_submit_that_raises_marks_the_job_as_not_run() -> None:
    rec = OrderRecorder()
    with pytest.raises(ShardsExhausted):
        rec.submit(RefusingDispatcher(), ["a"])
    assert rec.jobs[0].expect_run is False
    assert rec.jobs[0].admitted is None
    rec.check()


def test_submit_records_admission_and_future(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    rec = OrderRecorder()
    with rec.admission_lock():
        pass  # the lock is free between submits
    futures = [rec.submit(d, ["a"], lambda i=i: i) for i in range(5)]
    assert [f.result(timeout=WAIT) for f in futures] == list(range(5))
    assert [j.admitted for j in rec.jobs] == list(range(5))
    assert [j.future for j in rec.jobs] == futures
    rec.check()


def test_a_wrapped_job_declared_admitted_must_run() -> None:
    rec = OrderRecorder()
    lost = rec.wrap(["a"])
    rec.admitted(lost)
    with pytest.raises(AssertionError, match="never ran"):
        rec.check()


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(workloads(keys=("x", "y", "z"), max_jobs=10, max_keys_per_job=2))
def test_workloads_strategy_shapes(specs: list[JobSpec]) -> None:
    assert len(specs) <= 10
    for spec in specs:
        assert 1 <= len(spec.keys) <= 2
        assert len(set(spec.keys)) == len(spec.keys)
        assert set(spec.keys) <= {"x", "y", "z"}


@settings(max_examples=30, deadline=None)
@given(job_specs(keys=(1, 2), max_keys_per_job=1, failures=False, cancellations=False))
def test_job_specs_options(spec: JobSpec) -> None:
    assert len(spec.keys) == 1
    assert not spec.fail
    assert not spec.cancel


def test_job_spec_defaults() -> None:
    assert JobSpec(keys=("a",)) == JobSpec(keys=("a",), fail=False, cancel=False)
