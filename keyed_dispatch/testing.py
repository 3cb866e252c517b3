"""Test helpers for code that relies on per-key ordering.

:class:`OrderRecorder` wraps jobs, records when each was admitted, started
and finished, and :meth:`OrderRecorder.check` raises ``AssertionError``
naming the first violation of the dispatcher's guarantees. It understands
plain functions and coroutine functions, so the same checks serve the thread
and the asyncio dispatcher.

:class:`SimulatedDispatcher` runs keyed jobs in the calling thread, one
scheduling choice at a time, in any order the dispatcher may produce; with
:func:`hypothesis_chooser`, Hypothesis explores those orders and shrinks a
failing one.

The Hypothesis helpers (:func:`job_specs`, :func:`workloads`,
:func:`hypothesis_chooser`) import Hypothesis when called; the rest of this module needs only the standard
library.

Example::

    rec = OrderRecorder()
    with KeyedDispatcher(8) as d:
        for key in ["a", "b", "a"]:
            rec.submit(d, [key], work)
    rec.check()
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import KeyHalted, StartTimeout
from ._keys import normalize_keys
from ._simulator import Chooser, ScheduleStep, SimulatedDispatcher, SimulatedJob, describe_step

if TYPE_CHECKING:
    from hypothesis.strategies import DataObject, SearchStrategy

__all__ = [
    "JobSpec",
    "OrderRecorder",
    "RecordedJob",
    "ScheduleStep",
    "SimulatedDispatcher",
    "SimulatedJob",
    "hypothesis_chooser",
    "job_specs",
    "workloads",
]


class _Dispatcher(Protocol):
    def submit_multi(self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any) -> Any: ...


class _AsyncDispatcher(Protocol):
    # AsyncKeyedDispatcher.submit_multi, or KeyedDispatcher.submit_multi_async.
    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any
    ) -> Awaitable[Any]: ...


@dataclass
class RecordedJob:
    """One job as the recorder saw it. Event stamps are a global sequence.

    Attributes:
        job_id: the recorder's number for the job, in wrap order.
        keys: the job's keys, without duplicates.
        admitted: the job's rank in admission order, None if not admitted.
        starts: the stamps at which the job started (one if all is well).
        ends: the stamps at which the job ended (one if all is well).
        expect_run: whether the job must have run; None derives it from
            ``future`` when that is set, and otherwise means "ran if admitted".
        future: the future :meth:`OrderRecorder.submit` got for the job.
    """

    job_id: int
    keys: tuple[Hashable, ...]
    admitted: int | None = None
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    expect_run: bool | None = None
    future: Any = None


class OrderRecorder:
    """Thread-safe recorder of admission, start and end of wrapped jobs.

    Use :meth:`wrap` to get a callable that records its own start and end,
    then :meth:`admitted` right after the submit returns; or let
    :meth:`submit` do both under the recorder's admission lock, which makes
    the recorded admission order the true one even with many submitting
    threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._admission = threading.Lock()
        self._stamp = itertools.count()
        self._ids = itertools.count()
        self._next_admission = itertools.count()
        # asubmit's admission lock and its loop (an asyncio.Lock belongs to
        # the loop it is first used on; a new loop gets a new lock).
        self._async_admission: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.jobs: list[RecordedJob] = []

    def _now(self) -> int:
        # next() on itertools.count is atomic under the GIL and the
        # free-threaded build's per-object locks alike.
        return next(self._stamp)

    def wrap(self, keys: Iterable[Hashable], fn: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Return ``fn`` wrapped to record its start and end on ``keys``.

        ``fn`` may be a plain or a coroutine function (the wrapper is then a
        coroutine function too); None wraps a no-op. The wrapper has a
        ``recorded`` attribute, the :class:`RecordedJob`.
        """
        record = RecordedJob(job_id=next(self._ids), keys=normalize_keys(keys))
        with self._lock:
            self.jobs.append(record)
        body: Callable[..., Any] = fn if fn is not None else _noop
        if inspect.iscoroutinefunction(body):

            @functools.wraps(body)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                record.starts.append(self._now())
                try:
                    return await body(*args, **kwargs)
                finally:
                    record.ends.append(self._now())

            async_wrapper.recorded = record  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(body)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            record.starts.append(self._now())
            try:
                return body(*args, **kwargs)
            finally:
                record.ends.append(self._now())

        wrapper.recorded = record  # type: ignore[attr-defined]
        return wrapper

    def admitted(self, wrapped: Callable[..., Any]) -> None:
        """Record that the job of ``wrapped`` was admitted now.

        Call it right after ``submit`` returned. With several submitting
        threads, hold one lock around each submit-and-record pair (or use
        :meth:`submit`), or the recorded order may differ from the real one.
        """
        record: RecordedJob = wrapped.recorded  # type: ignore[attr-defined]
        record.admitted = next(self._next_admission)

    def admission_lock(self) -> threading.Lock:
        """The lock :meth:`submit` holds around submit-and-record."""
        return self._admission

    def submit(
        self,
        dispatcher: _Dispatcher,
        keys: Iterable[Hashable],
        fn: Callable[..., Any] | None = None,
        /,
        *args: Any,
    ) -> Any:
        """Wrap ``fn``, submit it on ``keys`` and record the admission.

        Returns what ``dispatcher.submit_multi`` returned (a future). If the
        submit raises, the job is recorded as one that must not run. The
        future is kept: :meth:`check` derives from its outcome whether the
        job must have run (see :meth:`expect_from_future`), so cancelled and
        timed-out jobs need no declaration.
        """
        wrapped = self.wrap(keys, fn)
        record: RecordedJob = wrapped.recorded  # type: ignore[attr-defined]
        with self._admission:
            try:
                future = dispatcher.submit_multi(record.keys, wrapped, *args)
            except BaseException:
                self.expect(wrapped, ran=False)
                raise
            self.admitted(wrapped)
        record.future = future
        return future

    async def asubmit(
        self,
        dispatcher: _AsyncDispatcher | _Dispatcher,
        keys: Iterable[Hashable],
        fn: Callable[..., Any] | None = None,
        /,
        *args: Any,
    ) -> Any:
        """Wrap ``fn``, submit it from a coroutine and record the admission.

        The asyncio :meth:`submit`: ``dispatcher`` is an
        ``AsyncKeyedDispatcher`` (its ``submit_multi`` is awaited; ``fn``
        must be a coroutine function, and None wraps an async no-op) or a
        ``KeyedDispatcher`` (its ``submit_multi_async`` is awaited). ``fn``
        may also be a wrapper that :meth:`wrap` returned, submitted as is
        (keep it to call :meth:`expect` on). The submit and the record
        happen under an ``asyncio.Lock`` of this recorder, so the recorded
        order is the true admission order even when several tasks submit
        and admission has to wait (the lock is held across the submit only,
        and never blocks the loop).

        asyncio can cancel a running job: its future is then cancelled, yet
        the job ran (once). Declare such a job with ``expect(wrapped,
        ran=True)``; a future cancelled before its job started means
        ``ran=False`` (what :meth:`expect_from_future` assumes).

        Returns:
            The future the dispatcher returned. If the submit raises, the
            job is recorded as one that must not run.
        """
        wrapped: Callable[..., Any]
        if fn is not None and isinstance(getattr(fn, "recorded", None), RecordedJob):
            wrapped = fn  # already wrapped by this recorder
        else:
            wrapped = self.wrap(keys, fn if fn is not None else _async_noop)
        loop = asyncio.get_running_loop()
        if self._async_admission is None or self._async_admission[0] is not loop:
            self._async_admission = (loop, asyncio.Lock())
        lock = self._async_admission[1]
        submit = getattr(dispatcher, "submit_multi_async", None) or dispatcher.submit_multi
        async with lock:
            try:
                future = await submit(wrapped.recorded.keys, wrapped, *args)  # type: ignore[attr-defined]
            except BaseException:
                self.expect(wrapped, ran=False)
                raise
            self.admitted(wrapped)
        return future

    def expect(self, wrapped: Callable[..., Any], *, ran: bool) -> None:
        """Declare whether the job must have run (True) or must not (False).

        Jobs left undeclared must have run if they were admitted (or, for
        jobs submitted with :meth:`submit`, as their future's outcome says).
        """
        record: RecordedJob = wrapped.recorded  # type: ignore[attr-defined]
        record.expect_run = ran

    def expect_from_future(self, wrapped: Callable[..., Any], future: Any) -> None:
        """Declare the expectation from a finished future's outcome.

        A cancelled future, or one that failed with StartTimeout or
        KeyHalted, means the job must not have run; any other outcome
        means it ran exactly once. Exception: asyncio can cancel a running
        job (its future is then cancelled too), so a cancelled asyncio
        future whose job had already started when this is called means it
        ran exactly once; call this right after cancelling.
        """
        record: RecordedJob = wrapped.recorded  # type: ignore[attr-defined]
        self.expect(wrapped, ran=_ran_by_outcome(future, record))

    def check(self) -> None:
        """Raise AssertionError naming the first violation found, if any.

        Call it once the workload has drained. Checked: a job submitted
        through :meth:`submit` has a finished future; each admitted job
        expected to run started and ended exactly once, and a job expected
        not to run never started; jobs sharing a key never overlapped; for
        every key, each job started only after the previous admitted job of
        that key (that ran) had ended.
        """
        with self._lock:
            jobs = list(self.jobs)
        for job in jobs:
            runs = len(job.starts)
            expect_run = job.expect_run
            if expect_run is None and job.future is not None:
                if not job.future.done():
                    raise AssertionError(
                        f"job {job.job_id} on {job.keys} has not finished; check() after the workload drains"
                    )
                expect_run = _ran_by_outcome(job.future, job)
            if expect_run is False:
                if runs:
                    raise AssertionError(f"job {job.job_id} on {job.keys} ran but must not have")
                continue
            if job.admitted is None and expect_run is None:
                if runs:
                    raise AssertionError(f"job {job.job_id} on {job.keys} ran but was never admitted")
                continue
            if runs == 0:
                how = "admitted" if job.admitted is not None else "expected to run"
                raise AssertionError(f"job {job.job_id} on {job.keys} was {how} but never ran")
            if runs > 1:
                raise AssertionError(f"job {job.job_id} on {job.keys} ran {runs} times")
            if not job.ends:
                raise AssertionError(f"job {job.job_id} on {job.keys} started but never ended")
        by_key: dict[Hashable, list[RecordedJob]] = {}
        for job in jobs:
            if job.admitted is not None and job.starts:
                for key in job.keys:
                    by_key.setdefault(key, []).append(job)
        for key, key_jobs in by_key.items():
            key_jobs.sort(key=lambda j: j.admitted)  # type: ignore[arg-type,return-value]
            for earlier, later in itertools.pairwise(key_jobs):
                if later.starts[0] < earlier.starts[0]:
                    raise AssertionError(
                        f"order inversion on key {key!r}: job {later.job_id} (admitted "
                        f"#{later.admitted}) started before job {earlier.job_id} "
                        f"(admitted #{earlier.admitted})"
                    )
                if later.starts[0] < earlier.ends[0]:
                    raise AssertionError(
                        f"overlap on key {key!r}: job {later.job_id} started before job "
                        f"{earlier.job_id} ended"
                    )

    def ran(self) -> list[RecordedJob]:
        """The jobs that started, in start order."""
        with self._lock:
            started = [job for job in self.jobs if job.starts]
        return sorted(started, key=lambda job: job.starts[0])


def _noop() -> None:
    return None


def _ran_by_outcome(future: Any, record: RecordedJob) -> bool:
    # StartTimeout and KeyHalted mean the job's body never ran; a result or
    # any other exception means it ran. A cancelled concurrent future never
    # ran (a running thread job cannot be cancelled), but asyncio cancels a
    # running job's task, so a cancelled asyncio future counts as run
    # exactly when it started (still checked for order, overlap and a
    # single run).
    if future.cancelled():
        return asyncio.isfuture(future) and bool(record.starts)
    return not isinstance(future.exception(), (StartTimeout, KeyHalted))


async def _async_noop() -> None:
    return None


# -- Hypothesis strategies -------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One job of a generated workload.

    Attributes:
        keys: the job's keys (one for a single-key job).
        fail: the job raises ``ValueError``.
        cancel: the test should try to cancel the job's future right after
            submitting it (it may already have started).
    """

    keys: tuple[Hashable, ...]
    fail: bool = False
    cancel: bool = False


def job_specs(
    keys: Sequence[Hashable] = ("a", "b", "c", "d", "e"),
    *,
    max_keys_per_job: int = 3,
    failures: bool = True,
    cancellations: bool = True,
) -> SearchStrategy[JobSpec]:
    """A Hypothesis strategy for one job over ``keys``.

    Mostly single-key jobs, some multi-key jobs (up to
    ``max_keys_per_job`` distinct keys); optionally failing or marked for
    cancellation.
    """
    from hypothesis import strategies as st

    key = st.sampled_from(list(keys))
    single = key.map(lambda k: (k,))
    multi = st.lists(key, min_size=2, max_size=max(2, max_keys_per_job), unique=True).map(tuple)
    key_sets = st.one_of(single, single, single, multi) if max_keys_per_job > 1 else single
    return st.builds(
        JobSpec,
        keys=key_sets,
        fail=st.booleans() if failures else st.just(False),
        cancel=st.booleans() if cancellations else st.just(False),
    )


def workloads(
    keys: Sequence[Hashable] = ("a", "b", "c", "d", "e"),
    *,
    max_jobs: int = 40,
    max_keys_per_job: int = 3,
    failures: bool = True,
    cancellations: bool = True,
) -> SearchStrategy[list[JobSpec]]:
    """A Hypothesis strategy for a list of jobs (see :func:`job_specs`)."""
    from hypothesis import strategies as st

    return st.lists(
        job_specs(
            keys,
            max_keys_per_job=max_keys_per_job,
            failures=failures,
            cancellations=cancellations,
        ),
        max_size=max_jobs,
    )


def hypothesis_chooser(data: DataObject) -> Chooser:
    """A chooser for :class:`SimulatedDispatcher` that lets Hypothesis pick each next job.

    Use it in a test given ``st.data()``, with a new dispatcher (and a new
    chooser) per example::

        @given(st.data())
        def test_handler(data):
            sim = SimulatedDispatcher(hypothesis_chooser(data))
            ...
            sim.run_until_idle()

    Each choice is drawn as an index into the candidates, which come in the
    default order: index 0 is the job the real dispatcher prefers, so
    Hypothesis shrinks a failing schedule towards the default order, and
    the schedule it reports deviates from it only where the failure needs
    it. Each step is also recorded with ``note()``, so the failure report
    lists the schedule in words (``step 2: job #3 on key B (handle) [among
    #1 #3]``). A step with one candidate draws nothing.
    """
    from hypothesis import note
    from hypothesis import strategies as st

    steps = itertools.count(1)

    def choose(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
        step = next(steps)
        index = data.draw(st.integers(min_value=0, max_value=len(jobs) - 1), label=f"step {step}")
        job = jobs[index]
        note(describe_step(step, job, job.started, (candidate.number for candidate in jobs)))
        return job

    return choose


def failing(message: str = "job failed on purpose") -> Callable[[], None]:
    """A job body that raises ``ValueError(message)``."""

    def fail() -> None:
        raise ValueError(message)

    return fail


def async_failing(message: str = "job failed on purpose") -> Callable[[], Awaitable[None]]:
    """A coroutine job body that raises ``ValueError(message)``."""

    async def fail() -> None:
        raise ValueError(message)

    return fail
