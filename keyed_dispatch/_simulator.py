"""SimulatedDispatcher: run keyed jobs in any schedule the dispatcher may produce.

A third runner of ``_engine.Engine``, for tests. The engine decides which
jobs may start, exactly as it does for the thread and asyncio runners; a
*chooser* decides which of them goes next, and that job runs to its end in
the calling thread. Every schedule is therefore one that a
:class:`~keyed_dispatch.KeyedDispatcher` with enough workers may produce,
and a chooser that explores the choices (``seed=``, or
:func:`~keyed_dispatch.testing.hypothesis_chooser`) explores the orders a
handler can see in production.

Time is simulated: ``advance()`` moves the clock, start deadlines fire
against it, and nothing reads the real clock or sleeps.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ._config import DispatcherConfig
from ._engine import CANCELLED, COMPLETED, FAILED, RUNNING, TIMED_OUT, Engine, Job, outcome_of
from ._errors import DispatcherClosed
from ._keys import KeysText
from ._runner import Runner, StartDeadlines, log_start, many_keys, one_key

__all__ = ["Chooser", "ScheduleStep", "SimulatedDispatcher", "SimulatedJob", "describe_step"]

_T = TypeVar("_T")


@dataclass(eq=False)
class SimulatedJob:
    """A job of a :class:`SimulatedDispatcher`, as choosers and the schedule see it.

    Read-only: the dispatcher sets ``started``.

    Attributes:
        number: its rank in admission order, from 1 (``#1`` in a schedule).
        keys: its keys, without duplicates.
        fn: the function it calls, with ``args`` and ``kwargs``.
        args: the positional arguments.
        kwargs: the keyword arguments.
        started: whether it has started. A started job is offered to the
            chooser again only while it is a coroutine suspended at an
            ``await asyncio.sleep(0)``: choosing it resumes it.
    """

    number: int
    keys: tuple[Hashable, ...]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    started: bool = False

    @property
    def name(self) -> str:
        """The qualified name of ``fn`` (its ``repr`` if it has none)."""
        name = getattr(self.fn, "__qualname__", None)
        return name if isinstance(name, str) else repr(self.fn)

    def __str__(self) -> str:
        # Keys as the log lines print them: str(), joined with "+".
        keys = "key" if len(self.keys) == 1 else "keys"
        return f"job #{self.number} on {keys} {KeysText(self.keys)} ({self.name})"


Chooser = Callable[[Sequence[SimulatedJob]], SimulatedJob]
"""Picks the job that goes next among the jobs that may go next.

Called with the candidates in the default order (the one the real
dispatcher prefers); returns one of them.
"""


def describe_step(number: int, job: SimulatedJob, resumed: bool, among: Iterable[int]) -> str:
    """A step in words: ``step 2: job #3 on key B (handle) [among #1 #3]``."""
    numbers = " ".join(f"#{n}" for n in among)
    return f"step {number}: {job}{' resumes' if resumed else ''} [among {numbers}]"


@dataclass(frozen=True)
class ScheduleStep:
    """One step of a simulated schedule: which job went, among which.

    Attributes:
        number: the step's rank, from 1.
        job: the job that started (or, a suspended coroutine, resumed).
        resumed: whether the job resumed after an ``await`` instead of starting.
        among: the numbers of the jobs that could have gone, in the
            default order (the first is the one the default chooser takes).
        clock: the simulated clock when the step began.
    """

    number: int
    job: SimulatedJob
    resumed: bool
    among: tuple[int, ...]
    clock: float

    def __str__(self) -> str:
        return describe_step(self.number, self.job, self.resumed, self.among)


class _SimulatedFuture(Future[_T]):
    # A plain concurrent future whose cancel() retires its queued job.
    _sim: SimulatedDispatcher
    _job: Job
    _info: SimulatedJob
    _coro: Coroutine[Any, Any, Any] | None = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._sim._on_cancel(self._job)
        return True


class _ChooserFailed(BaseException):
    # The chooser raised inside a job (a submit waiting for room runs
    # steps): the error must reach the caller of step(), not the job's
    # future (Hypothesis stops a test case by raising from a draw).
    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _index_of(chosen: SimulatedJob, offered: list[SimulatedJob]) -> int:
    for index, job in enumerate(offered):
        if job is chosen:
            return index
    raise ValueError(f"the chooser returned {chosen!r}, not one of the jobs it was offered")


def _seeded(seed: int) -> Chooser:
    rnd = random.Random(seed)  # noqa: S311 - picks schedules, not secrets

    def choose(jobs: Sequence[SimulatedJob]) -> SimulatedJob:
        return jobs[rnd.randrange(len(jobs))]

    return choose


class SimulatedDispatcher(Runner):
    """Run keyed jobs in the calling thread, one scheduling choice at a time.

    The same ordering engine as :class:`~keyed_dispatch.KeyedDispatcher`
    decides which jobs may start: jobs sharing a key start in admission
    order and never overlap, a multi-key job starts once it heads every
    one of its keys, a halted key fails its jobs, a start deadline fails a
    job that waited too long. Among the jobs that may start, the chooser
    picks the one that goes next; the concurrency is unlimited (any
    runnable job may be picked, as if a worker were always free), so every
    schedule is one the thread dispatcher may produce with enough workers.

    Interleaving is at job granularity: a chosen job runs to its end before
    the next choice. Two exceptions, both legal schedules too: a coroutine
    job (a function that returns a coroutine) runs until each
    ``await asyncio.sleep(0)``, where it keeps its keys and the chooser may
    resume it or run another job; and a submit that waits for room
    (``max_shards``, ``max_pending``) runs other jobs while it waits, even
    inside a job.

    Jobs may submit more jobs. Futures are ``concurrent.futures.Future``
    objects, resolved as the jobs run; cancelling one before its job starts
    retires the job at once (its keys move on). Time is simulated:
    :meth:`advance` moves :attr:`clock`, start deadlines fire against it, and
    nothing sleeps. A submit that finds no room runs jobs and moves the clock
    (up to ``submit_timeout``) until room frees, or raises as
    ``KeyedDispatcher`` does once no room can free.

    Not thread-safe: use it from one thread; jobs run in that thread.

    ``max_shards``, ``submit_timeout``, ``start_timeout``, ``max_pending``,
    ``wait_warning`` and ``halt_on_error`` mean what they mean for
    ``KeyedDispatcher``, with seconds on the simulated clock. There is no
    ``exclusive()``.

    Args:
        chooser: picks the next job: called with the candidates (a
            sequence of :class:`SimulatedJob`, in the default order), it
            returns one of them. None picks the first: the oldest runnable
            job, as the thread dispatcher does (the schedule of one worker).
        seed: pick at random, reproducibly, instead of ``chooser``.
        config: the base settings; None means ``DispatcherConfig()``'s
            defaults, not the environment's (a test must not depend on it).

    Raises:
        TypeError: both ``chooser`` and ``seed``, or a chooser that is not
            callable; a setting of the wrong type.
        ValueError: a setting is out of range (ConfigError).
    """

    def __init__(
        self,
        chooser: Chooser | None = None,
        *,
        seed: int | None = None,
        max_shards: int | None = None,
        submit_timeout: float | None = None,
        start_timeout: float | None = None,
        max_pending: int | None = None,
        wait_warning: float | None = None,
        halt_on_error: bool = False,
        config: DispatcherConfig | None = None,
    ) -> None:
        if chooser is not None and seed is not None:
            raise TypeError("pass a chooser or a seed, not both")
        if chooser is not None and not callable(chooser):
            raise TypeError(f"chooser must be callable, got {type(chooser).__name__}")
        super().__init__(
            config if config is not None else DispatcherConfig(),
            halt_on_error,
            None,
            max_shards,
            submit_timeout,
            start_timeout,
            max_pending,
            wait_warning,
        )
        self._chooser = _seeded(seed) if seed is not None else chooser
        self._engine = Engine(halt_on_error=halt_on_error)
        self._clock = 0.0
        self._deadlines = StartDeadlines()
        self._numbers = itertools.count(1)
        self._schedule: list[ScheduleStep] = []
        # Started coroutine jobs waiting at an ``await``, oldest wait first.
        self._suspended: list[Job] = []
        self._active = 0  # jobs started and not finished
        self._depth = 0  # job bodies on the stack now (nested by waiting submits)

    # -- submission ----------------------------------------------------------

    @overload
    def submit(
        self, key: Hashable, fn: Callable[..., Coroutine[Any, Any, _T]], /, *args: Any, **kwargs: Any
    ) -> Future[_T]: ...

    @overload
    def submit(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]: ...

    def submit(self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Admit ``fn(*args, **kwargs)`` on ``key``; it runs when a step chooses it.

        Returns:
            A future for the result; cancelling it before the job starts
            means the job never runs and its key moves on.

        Raises:
            TypeError: ``key`` is unhashable or ``fn`` is not callable.
            ShardsExhausted, SubmitTimeout: no room came (see the class).
            DispatcherClosed: after :meth:`shutdown`.
        """
        return self._submit(one_key(key, fn, "fn"), fn, args, kwargs)

    @overload
    def submit_multi(
        self,
        keys: Iterable[Hashable],
        fn: Callable[..., Coroutine[Any, Any, _T]],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Future[_T]: ...

    @overload
    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> Future[_T]: ...

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Admit one job ordered on every key in ``keys`` (see :meth:`submit`).

        Raises:
            ValueError: ``keys`` is empty.
            TypeError: ``keys`` is a string or holds an unhashable key, or
                ``fn`` is not callable.
            ShardsExhausted, SubmitTimeout, DispatcherClosed: as :meth:`submit`.
        """
        return self._submit(many_keys(keys, fn, "fn"), fn, args, kwargs)

    def _submit(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        if self._closed:
            raise DispatcherClosed("the dispatcher is shut down; it admits no new jobs")
        config = self._config
        if not self._engine.fits(keys, config.max_shards, config.max_pending):
            self._wait_for_room(keys)
        future: _SimulatedFuture[Any] = _SimulatedFuture()
        job = Job(keys, fn, args, kwargs, future)
        future._sim = self
        future._job = job
        future._info = SimulatedJob(next(self._numbers), keys, fn, args, kwargs)
        self._engine.admit(job, self._clock)
        if config.start_timeout is not None:
            self._deadlines.add(job, self._clock + config.start_timeout)
        return future

    def _wait_for_room(self, keys: tuple[Hashable, ...]) -> None:
        # What happens while a real submit waits for room: other jobs run,
        # and time passes up to submit_timeout, firing the deadlines due.
        self._check_can_fit(keys)
        config = self._config
        engine = self._engine
        deadline = self._clock + config.submit_timeout
        while not engine.fits(keys, config.max_shards, config.max_pending):
            if self._step():
                if self._closed:
                    raise DispatcherClosed("the dispatcher was shut down while the submit waited for room")
                continue
            due = self._deadlines.next_due()
            if due is not None and due <= deadline:
                self._move_clock(due)
                continue
            # Nothing can free room before the wait times out.
            if not math.isinf(deadline):
                self._move_clock(deadline)
            raise self._no_room(keys)

    # -- running -------------------------------------------------------------

    def step(self) -> bool:
        """Run one scheduling choice: start (or resume) the job the chooser picks.

        Returns:
            False, doing nothing, when no job can go.

        Raises:
            RuntimeError: called from inside one of this dispatcher's jobs.
            What the chooser raises.
        """
        self._check_outside_jobs("step()")
        return self._step()

    def run_until_idle(self) -> int:
        """Take steps until no job can go; return how many were taken.

        Called outside jobs, it returns with every admitted job retired.

        Raises:
            RuntimeError: called from inside one of this dispatcher's jobs.
            What the chooser raises.
        """
        self._check_outside_jobs("run_until_idle()")
        steps = 0
        while self._step():
            steps += 1
        return steps

    def _check_outside_jobs(self, what: str) -> None:
        if self._depth:
            raise RuntimeError(f"{what} inside a job of this dispatcher would run jobs within it")

    def _step(self) -> bool:
        candidates = [*self._suspended, *self._engine.runnable_jobs()]
        if not candidates:
            return False
        infos = [job.future._info for job in candidates]
        index = self._choose(infos)
        job = candidates[index]
        info = infos[index]
        resumed = job.state == RUNNING
        self._schedule.append(
            ScheduleStep(len(self._schedule) + 1, info, resumed, tuple(i.number for i in infos), self._clock)
        )
        if resumed:
            self._suspended.remove(job)
            self._run(job, job.future._coro)
        else:
            self._start(self._engine.take_job(job, self._clock))
        return True

    def _choose(self, infos: list[SimulatedJob]) -> int:
        chooser = self._chooser
        if chooser is None:
            return 0
        try:
            return _index_of(chooser(tuple(infos)), infos)
        except BaseException as exc:
            if self._depth:
                raise _ChooserFailed(exc) from exc
            raise

    def _start(self, job: Job) -> None:
        future = job.future
        # A cancelled job left the queues at once, so it is never taken.
        running = future.set_running_or_notify_cancel()
        assert running, "a cancelled job was taken"
        if job.error is not None:  # a halted key
            future.set_exception(job.error)
            self._retire(job, outcome_of(job.error), None)
            return
        log_start(job.keys, job.waited, self._config.wait_warning)
        future._info.started = True
        self._active += 1
        self._run(job, None)

    def _run(self, job: Job, coro: Coroutine[Any, Any, Any] | None) -> None:
        # Start the job's body (coro is None) or resume its coroutine, up
        # to its end or its next ``await asyncio.sleep(0)``.
        future = job.future
        outcome, value, error = COMPLETED, None, None
        self._depth += 1
        try:
            if coro is None:
                value = job.fn(*job.args, **job.kwargs)  # type: ignore[misc]
                if isinstance(value, Coroutine):
                    coro = future._coro = value
            if coro is not None:
                value = None
                try:
                    self._advance_coroutine(job, coro)
                except StopIteration as stop:
                    value = stop.value
                else:
                    self._suspended.append(job)
                    return
        except BaseException as exc:  # noqa: BLE001 - the job's error belongs to its future
            outcome, error = FAILED, exc
        finally:
            self._depth -= 1
        if isinstance(error, _ChooserFailed):
            # Cut short by the chooser: every job on the stack fails with
            # its error, which the outermost one raises.
            self._finish(job, FAILED, None, error.error)
            raise error if self._depth else error.error
        self._finish(job, outcome, value, error)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error  # as asyncio does: the test run must stop

    def _advance_coroutine(self, job: Job, coro: Coroutine[Any, Any, Any]) -> None:
        # Returns with the coroutine suspended at a bare yield (what
        # ``asyncio.sleep(0)`` does); raises StopIteration at its end, or
        # its exception.
        awaited = coro.send(None)
        if awaited is None:
            return
        # It awaits something only an event loop can wake. Raise there, so
        # that the traceback shows the await.
        error = RuntimeError(
            f"{job.future._info} awaited {awaited!r}: in a SimulatedDispatcher, coroutine jobs may "
            "await only code that suspends at `await asyncio.sleep(0)` (fakes, not real I/O or timers)"
        )
        if coro.throw(error) is None:
            return  # it caught the error and went on
        coro.close()
        raise error

    def _finish(self, job: Job, outcome: int, result: Any, error: BaseException | None) -> None:
        # As the thread runner: the future resolves, then the keys move on.
        future = job.future
        self._active -= 1
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
        self._retire(job, outcome, error)

    def _retire(self, job: Job, outcome: int, error: BaseException | None) -> None:
        future = job.future
        future._coro = None
        job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        self._engine.release(job, outcome, error)

    def _on_cancel(self, job: Job) -> None:
        # Called by _SimulatedFuture.cancel once the future is cancelled. A
        # job's future is marked running as soon as the job leaves the
        # queue (taken or expired), so a cancel that succeeds finds it queued.
        killed = self._engine.kill(job, CANCELLED)
        assert killed, "a job that left its queue had a cancellable future"
        future = job.future
        job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        # Wakes the waiters of concurrent.futures.wait(), as a worker would.
        future.set_running_or_notify_cancel()

    # -- the simulated clock -------------------------------------------------

    @property
    def clock(self) -> float:
        """The simulated time in seconds: 0 at construction, moved only by :meth:`advance`."""
        return self._clock

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward; fail the jobs whose start deadline passed.

        A job still queued ``start_timeout`` seconds after its admission
        fails with StartTimeout and never runs; its keys move on. No job
        runs here. A job may call this to stand for work that takes time.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative, infinite or NaN.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {type(seconds).__name__}")
        if not 0 <= seconds < math.inf:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
        self._move_clock(self._clock + seconds)

    def _move_clock(self, now: float) -> None:
        self._clock = now
        expired: list[tuple[Future[Any], BaseException]] = []
        for job in self._deadlines.pop_due(now):
            future = job.future
            error = self._start_timeout_error(job)
            self._engine.kill(job, TIMED_OUT)
            job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
            # From here on it cannot be cancelled (by a callback of another
            # expired job, for one).
            future.set_running_or_notify_cancel()
            expired.append((future, error))
        for late, timeout_error in expired:
            late.set_exception(timeout_error)

    # -- control ---------------------------------------------------------------

    @property
    def schedule(self) -> list[ScheduleStep]:
        """The steps taken so far, in order (a copy). ``str()`` of a step says it in words."""
        return list(self._schedule)

    def _guard(self) -> nullcontext[None]:
        return nullcontext()

    def _workers(self) -> tuple[int, int]:
        return self._active, 0

    def _now(self) -> float:
        return self._clock

    def _poke(self) -> None:
        # Nothing starts here: a job runs only when a step chooses it.
        return

    def _cancel_jobs(self, jobs: list[Job]) -> int:
        return sum(1 for job in jobs if job.future is not None and job.future.cancel())

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """Stop admitting jobs; optionally cancel the queued ones; with ``wait``, run the rest.

        Later ``submit*`` calls raise DispatcherClosed. With ``wait``, steps
        are taken (the chooser still choosing) until every admitted job is
        retired. Safe to call again.

        Raises:
            RuntimeError: ``wait=True`` from inside one of this dispatcher's jobs.
        """
        if wait:
            self._check_outside_jobs("shutdown(wait=True)")
        self._closed = True
        if cancel_pending:
            for job in self._engine.queued_jobs():
                job.future.cancel()
        if wait:
            while self._step():
                pass

    def __enter__(self) -> SimulatedDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<SimulatedDispatcher {state} clock={self._clock:g} steps={len(self._schedule)} "
            f"shards={self._engine.live_keys()}>"
        )
