"""AsyncKeyedDispatcher: per-key ordered dispatch of coroutines on an event loop.

The second runner of ``_engine.Engine`` (the first is the thread pool of
``_thread.py``; what both share is in ``_runner.py``). The engine decides
which job may start; this module runs the jobs as coroutines on one event
loop. The dispatcher is confined to that
loop: every engine call happens on the loop's thread, between two awaits,
which serializes them as the thread runner's lock does. There is no lock.

A job runs in one of two ways:

* ``submit*``: in a task of its own, created when the job starts, in a copy of
  the submitter's context (as ``asyncio.create_task`` at submit time would).
* ``run*``: in the calling task, inline, as ``async with lock: await job()``
  would. The caller waits for its turn on a future that the runner resolves
  when the engine grants the job, then runs the coroutine itself. No task is
  created, and a cancelled caller is a cancelled job, by construction. On an
  idle key, ``run`` needs no future either: one engine call admits and starts
  the job (``Engine.admit_one``), with a Job record reused from an earlier
  run.

``exclusive`` blocks are granted the same way as ``run*`` jobs but, as with
the thread runner, take no concurrency slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import threading
import time
from asyncio import CancelledError
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from concurrent.futures import Future as ConcurrentFuture
from contextlib import AbstractContextManager, nullcontext
from contextvars import Context, copy_context
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ._config import check_timeout
from ._engine import (
    BACKOFF,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    SUPERSEDED,
    TIMED_OUT,
    Engine,
    Job,
    outcome_of,
)
from ._errors import DispatcherClosed, StartTimeout
from ._keys import KeysText, normalize_keys
from ._policies import _UNSET, JobContext, JobOptions, Retry
from ._runner import Runner, RunnerSettings, StartDeadlines, log_start, many_keys, one_key

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_MAX_CONCURRENCY", "AsyncKeyedDispatcher", "AsyncKeyedOptions"]

_T = TypeVar("_T")

DEFAULT_MAX_CONCURRENCY = 100
"""Running coroutines at most when neither an argument, a ``config`` nor
``KEYED_DISPATCH_MAX_WORKERS`` says otherwise. The thread default
(``min(32, cpus + 4)``) sizes a thread pool; coroutines are cheap, so the
bound only protects what the jobs call."""

_MAX_WORKERS_VAR = "KEYED_DISPATCH_MAX_WORKERS"

_get_running_loop = asyncio._get_running_loop
_log_enabled = logging.getLogger("keyed_dispatch").isEnabledFor
_DEBUG = logging.DEBUG
_current_task = asyncio.current_task
_future_cancel = asyncio.Future.cancel  # bypasses _JobFuture.cancel
_base_time = asyncio.BaseEventLoop.time
_base_create_future = asyncio.BaseEventLoop.create_future

if sys.version_info >= (3, 11):

    def _create_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], context: Context
    ) -> asyncio.Task[None]:
        return loop.create_task(coro, context=context)

else:

    def _create_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], context: Context
    ) -> asyncio.Task[None]:
        # create_task(context=) is 3.11+; a task copies the current context.
        return context.run(loop.create_task, coro)


def _inline() -> None:
    """Marks a job run inline by its caller (``run*``); never called."""
    raise AssertionError("inline jobs are run by their caller")


# Jobs of _run's fast path kept for reuse, at most.
_SPARE_JOBS = 64

# Shared by every inline job, which keeps its arguments in the caller's frame.
_NO_ARGS: tuple[Any, ...] = ()
_NO_KWARGS: dict[str, Any] = {}


class _JobFuture(asyncio.Future[_T]):
    """The future ``submit*`` returns: an ``asyncio.Future`` of the result.

    ``cancel()`` on a job that has not started retires it at once: it never
    runs and its keys move on. On a running job, it cancels the job's task
    (asyncio semantics); the keys move on once the job has unwound.
    """

    __slots__ = ("_kd_context", "_kd_job", "_kd_owner", "_kd_task")

    _kd_job: Job
    _kd_owner: AsyncKeyedDispatcher | None
    _kd_task: asyncio.Task[None] | None
    _kd_context: Context

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        owner = self._kd_owner
        if owner is not None:
            owner._on_cancel(self, msg)
        return True


class AsyncKeyedDispatcher(Runner):
    """Run coroutine jobs on the event loop, one at a time and in order per key.

    The asyncio counterpart of :class:`KeyedDispatcher`, with the same
    guarantees and the same ordering engine: jobs that share a key never
    overlap and start in admission order (the order in which ``submit*`` and
    ``run*`` calls are admitted; for one task, program order); jobs whose
    keys are disjoint run concurrently, up to ``max_concurrency`` coroutines
    at once, and no slot idles while an admitted job could start. Multi-key
    jobs are placed in all their keys' queues atomically and cannot deadlock.

    The dispatcher binds to the event loop it is first used on; using it
    from another loop or thread raises RuntimeError (use
    :meth:`submit_threadsafe` from other threads). Admission waits
    (``max_shards``, ``max_pending``) are awaited, never blocking the loop.

    Arguments left as None take their value from ``config`` if given, else
    from :meth:`DispatcherConfig.from_env` (the same ``KEYED_DISPATCH_*``
    variables as the thread dispatcher). ``max_concurrency`` maps to the
    config's ``max_workers``: it is read from ``config`` or from
    ``KEYED_DISPATCH_MAX_WORKERS`` when set, and defaults to
    ``DEFAULT_MAX_CONCURRENCY`` (100) otherwise. ``idle_timeout`` does not
    apply (there are no worker threads).

    ``max_shards``, ``submit_timeout``, ``start_timeout``, ``max_pending``,
    ``wait_warning``, ``halt_on_error``, ``retry``, ``dead_letter`` and
    ``config`` mean what they mean for
    :class:`KeyedDispatcher`; a start deadline fails its job on time even
    while an earlier job of its key still runs.

    Args:
        max_concurrency: coroutine jobs running at once, at most.
        name: the ``dispatcher`` label of its metrics.
        metrics: record the wait and run histograms of :meth:`stats`, as
            for :class:`KeyedDispatcher`.

    Raises:
        ValueError: a setting is out of range (ConfigError).
        TypeError: a setting has the wrong type.
    """

    def __init__(self, max_concurrency: int | None = None, **settings: Unpack[RunnerSettings]) -> None:
        if (
            settings.get("config") is None
            and max_concurrency is None
            and not os.environ.get(_MAX_WORKERS_VAR, "").strip()
        ):
            max_concurrency = DEFAULT_MAX_CONCURRENCY
        super().__init__(max_concurrency, **settings)

    def _setup(self) -> None:
        config = self._config
        # Read on every job: kept as attributes (the config is frozen).
        self._max = config.max_workers
        self._max_shards = config.max_shards
        self._max_pending = config.max_pending
        self._start_timeout = config.start_timeout
        self._wait_warning = config.wait_warning
        self._engine = Engine(halt_on_error=self._halt_on_error, metrics=self._metrics)
        # Bound on first use (_bind).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._time: Callable[[], float] = _unbound
        self._new_future: Callable[[], asyncio.Future[Any]] = _unbound
        # Jobs holding a concurrency slot: run* jobs and submit* tasks.
        self._active = 0
        # Re-entrancy guard: an eager task factory may run a job's first step
        # inside create_task, which may admit or finish jobs.
        self._dispatching = False
        # The tasks of running submit* jobs: the loop keeps only weak
        # references to tasks.
        self._tasks: set[asyncio.Task[Any]] = set()
        # Jobs of _run's fast path that ran, for its next runs (at most
        # _SPARE_JOBS: a burst does not leave its jobs behind).
        self._spare: list[Job] = []
        # Whether run's fast path may apply: no retry policy (a retried job
        # keeps its Job), not closed (aclose clears it).
        self._claims = self._retry is None
        # task -> the job it runs (a job or an exclusive block): a wait that
        # would deadlock on itself raises instead; current_job() reads it.
        self._holders: dict[asyncio.Task[Any], Job] = {}
        # Submitters waiting for room; all are woken when room may have freed.
        self._room_waiters: dict[asyncio.Future[None], None] = {}
        # aclose() calls waiting for the drain.
        self._drain_waiters: list[asyncio.Future[None]] = []
        # One timer, for the earliest start deadline.
        self._deadlines = StartDeadlines()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    # -- loop binding --------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # The loop of the calling coroutine, which must be the bound one; the
        # first call binds it.
        loop = self._loop
        running = _get_running_loop()
        if running is not loop or loop is None:
            loop = self._bind(running)
        return loop

    def _bind(self, running: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        # Called when the running loop is not the bound one (or none is).
        if running is None:
            raise RuntimeError(
                "AsyncKeyedDispatcher must be used from a coroutine running on its event loop; "
                "from other threads use submit_threadsafe()"
            )
        if self._loop is None:
            self._loop = running
            self._thread = threading.get_ident()
            # loop.call_at takes loop.time(); the default loops' time() is
            # time.monotonic(), called directly to spare a frame per job.
            self._time = time.monotonic if type(running).time is _base_time else running.time
            # Likewise, their create_future() is Future(loop=loop): a frame
            # less per job that waits for its turn.
            self._new_future = (
                partial(asyncio.Future, loop=running)
                if type(running).create_future is _base_create_future
                else running.create_future
            )
            return running
        raise RuntimeError(
            f"this AsyncKeyedDispatcher is bound to event loop {self._loop!r}, not to the running "
            f"loop {running!r}; it cannot be shared between loops. From another thread, use "
            "submit_threadsafe()"
        )

    def _check_thread(self) -> None:
        if self._thread is not None and threading.get_ident() != self._thread:
            raise RuntimeError(
                "this AsyncKeyedDispatcher is confined to the thread of its event loop; "
                "use loop.call_soon_threadsafe() or submit_threadsafe() from other threads"
            )

    # -- submission ----------------------------------------------------------

    async def submit(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """Schedule ``coro_fn(*args, **kwargs)`` to run on ``key`` in a task of its own.

        Admission is the return of this call; it awaits room (``max_shards``,
        ``max_pending``) up to ``submit_timeout`` without blocking the loop.
        The job starts once every job admitted earlier on ``key`` has
        finished, in a copy of the submitter's context.

        Cancelling the task awaiting this call during admission leaves no
        trace: nothing is queued and no shard is taken.

        Returns:
            An ``asyncio.Future`` of the job's result. Cancelling it before
            the job starts means the job never runs and the key moves on at
            once; cancelling it while the job runs cancels the job's task,
            and the key's next job starts once it has unwound.

        Raises:
            TypeError: ``key`` is unhashable or ``coro_fn`` is not callable.
            ShardsExhausted: ``key`` needs a new shard and none freed in time.
            SubmitTimeout: ``max_pending`` jobs stayed queued too long.
            DispatcherClosed: after :meth:`aclose`.
            RuntimeError: called from another loop than the bound one.
        """
        return await self._submit(one_key(key, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    async def submit_multi(
        self, keys: Iterable[Hashable], coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """Schedule one job ordered on every key in ``keys`` (see :meth:`submit`).

        The job is placed in the queue of each key in one atomic step and
        starts when it is first in all of them. Deadlock is impossible by
        construction, whatever the order of the keys. Duplicates count once.

        Raises:
            ValueError: ``keys`` is empty.
            TypeError: ``keys`` is a string or holds an unhashable key, or
                ``coro_fn`` is not callable.
            ShardsExhausted, SubmitTimeout, DispatcherClosed, RuntimeError:
                as :meth:`submit`.
        """
        return await self._submit(many_keys(keys, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    async def _submit(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: JobOptions | None = None,
    ) -> asyncio.Future[_T]:
        loop = self._get_loop()
        future: _JobFuture[_T] = _JobFuture(loop=loop)
        job = Job(keys, fn, args, kwargs, future, options=options)
        future._kd_job = job
        future._kd_owner = self
        future._kd_task = None
        future._kd_context = copy_context()
        if not self._admit_now(job):
            await self._admit_later(job)
        return future

    def run(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, _T]:
        """Run ``coro_fn(*args, **kwargs)`` on ``key`` in the calling task; return its result.

        Use it as ``await ad.run(key, coro_fn, ...)``. The job is admitted
        as by :meth:`submit`, then the caller waits for its turn and awaits
        the coroutine itself: like ``async with locks[key]: return await
        coro_fn()``, but ordered by admission, bounded and observable. The
        job's exception propagates. (A plain method that returns the
        coroutine, so that each suspension of the job crosses one frame
        less; bad arguments raise at the call.)

        Cancelling the calling task before the job starts means it never
        runs (the key moves on at once); while it runs, the job's coroutine
        is cancelled, and the key's next job starts once it has unwound.

        Raises:
            RuntimeError: the calling task already holds a key of this
                dispatcher (it is a job of this dispatcher, or inside an
                ``exclusive`` block): waiting here could deadlock. Use one
                job with all the keys, or ``submit`` without awaiting.
            StartTimeout: the job did not start within ``start_timeout``.
            KeyHalted: a key is halted (``halt_on_error``).
            DispatcherClosed: the dispatcher is closed, or ``aclose(
                cancel_pending=True)`` cancelled the job before it started.
            TypeError, ShardsExhausted, SubmitTimeout: as :meth:`submit`.
        """
        return self._run(one_key(key, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    def run_multi(
        self, keys: Iterable[Hashable], coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, _T]:
        """Run one job ordered on every key in ``keys`` in the calling task.

        :meth:`run` for several keys, with :meth:`submit_multi`'s admission.
        """
        return self._run(many_keys(keys, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    async def _run(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: JobOptions | None = None,
    ) -> _T:
        # _get_loop(), inlined, as is much of this method: it is the whole
        # cost of an uncontended run, and each call spared is ~2% of it.
        loop = self._loop
        running = _get_running_loop()
        if running is not loop or loop is None:
            loop = self._bind(running)
        task = _current_task(loop)
        holders = self._holders
        if task in holders:
            raise self._held_error(holders[task].keys, keys, "task")
        engine = self._engine
        # Whether the job's Job may serve again once it has run (see below).
        reuse = False
        started: bool | None = None
        if self._claims and options is None and len(keys) == 1 and self._active < self._max:
            # The fast path: one engine call admits the job. On an idle key
            # it starts at once, with no waiter, as an uncontended ``async
            # with lock`` would; the engine holds the key for it all the
            # same, so jobs admitted meanwhile queue behind it. Its Job is
            # one kept from an earlier run: once such a job has run, nothing
            # but this frame refers to it, unless a start deadline does.
            spare = self._spare
            job = spare.pop() if spare else Job(keys, _inline, _NO_ARGS, _NO_KWARGS, None)
            now = self._time()
            started = engine.admit_one(job, keys, now, self._max_shards, self._max_pending)
            if started is None:
                spare.append(job)  # not admitted: kept for the next run
            elif started:
                self._active += 1
                reuse = True
            elif self._start_timeout is None:
                reuse = True
            else:
                self._add_deadline(job, now + self._start_timeout)
        if started is None:
            # The general way in.
            if options is None:
                job = Job(keys, _inline, _NO_ARGS, _NO_KWARGS, None)
            else:
                job = Job(keys, _inline, _NO_ARGS, _NO_KWARGS, None, options=options)
            if not self._admit_now(job):
                await self._admit_later(job)
        if job.state != RUNNING:
            # Not granted during admission: wait for the turn. A job that
            # failed instead of starting (halted key) is already retired.
            if job.error is not None:
                raise job.error
            # _await_turn(job, loop), inlined: a coroutine less per queued job.
            waiter: asyncio.Future[None] = self._new_future()
            job.future = waiter
            try:
                await waiter
            except CancelledError:
                self._abandon(job, waiter)
                raise
        # log_start's own test, inlined.
        warn = self._wait_warning
        if _log_enabled(_DEBUG) or (warn is not None and job.waited >= warn):
            log_start(keys, job.waited, warn, job.seq)
        if task is not None:
            holders[task] = job
        if started is None and (options is not None or self._retry is not None):
            return await self._attempts(task, job, fn, args, kwargs)
        timings = engine.timings
        began = 0.0
        if timings is not None:
            # A job that started at once starts at its admission (a time()
            # call less for metrics=True).
            job.started = began = now if started else self._time()
        try:
            result = await fn(*args, **kwargs)
        except CancelledError:
            self._finish(task, job, CANCELLED, None)
            raise
        except BaseException as exc:
            self._finish(task, job, FAILED, exc)
            raise
        # _finish(task, job, COMPLETED, None), inlined (and _ran).
        if task is not None:
            del holders[task]
        self._active -= 1
        if timings is not None:
            timings.run.add(self._time() - began)
            job.started = None
        # A job admitted behind others never ends alone on its key (its
        # shard is a deque): no need to ask.
        if started is False or not engine.release_alone(job):
            self._retire(job, COMPLETED, None)
        elif self._room_waiters or self._closed:
            self._after_retire()
        if reuse and len(self._spare) < _SPARE_JOBS:
            job.future = None
            self._spare.append(job)
        return result

    async def _attempts(
        self,
        task: asyncio.Task[Any] | None,
        job: Job,
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _T:
        # The body of a run* job that may be retried (a retry policy or
        # options): attempts until one does not fail with a retried error.
        holders = self._holders
        engine = self._engine
        loop = self._loop
        assert loop is not None
        while True:
            if engine.timings is not None:
                job.started = self._time()
            try:
                result = await fn(*args, **kwargs)
            except CancelledError:
                self._finish(task, job, CANCELLED, None)
                raise
            except BaseException as exc:
                delay = self._retry_delay(job, exc, self._time())
                if delay is None:
                    self._final_failure(job, exc, fn, args, kwargs)
                    self._finish(task, job, FAILED, exc)
                    raise
                # Retried: wait for the turn again, holding no slot.
                self._backoff(task, job, exc, delay)
                await self._await_turn(job, loop)
                log_start(job.keys, job.waited, self._wait_warning, job.seq)
                if task is not None:
                    holders[task] = job
                continue
            self._finish(task, job, COMPLETED, None)
            return result

    async def _await_turn(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        # The caller of a run* job or exclusive block waits here for the
        # grant. The waiter resolves to None (granted: RUNNING) or to the
        # exception the caller must raise (its job already retired).
        waiter: asyncio.Future[None] = loop.create_future()
        job.future = waiter
        try:
            await waiter
        except CancelledError:
            self._abandon(job, waiter)
            raise

    def _abandon(self, job: Job, waiter: asyncio.Future[None]) -> None:
        # The task waiting on ``waiter`` for ``job``'s turn was cancelled:
        # the job never runs. It may still be queued, or granted (the waiter
        # resolved just before the cancellation reached the task).
        if waiter.done() and not waiter.cancelled():
            # Failed (StartTimeout...) just before the cancellation reached
            # this task: the cancellation wins; mark the error retrieved so
            # that asyncio does not log it.
            waiter.exception()
        state = job.state
        if state in (QUEUED, BACKOFF):
            self._engine.kill(job, CANCELLED)
            self._after_retire()
        elif state == RUNNING:
            if job.fn is not None:
                self._active -= 1
            self._engine.release(job, CANCELLED)
            self._after_retire()

    # -- admission -----------------------------------------------------------

    def _admit_now(self, job: Job) -> bool:
        # Admit ``job`` if there is room, and start what can start. Returns
        # False, changing nothing, if it must wait for room first.
        if self._closed:
            raise DispatcherClosed("the dispatcher is closed; it admits no new jobs")
        engine = self._engine
        if not engine.fits(job.keys, self._max_shards, self._max_pending):
            return False
        now = self._time()
        options = job.options
        if options is not None and options.supersede:
            victims = engine.superseded_by(job.keys)
            for victim, error in zip(victims, self._superseded_errors(victims, job.keys), strict=True):
                self._kill_queued(victim, SUPERSEDED, error)
        if self._active < self._max:
            if engine.admit_started(job, now):
                self._start(job)
                if job.error is not None:
                    self._after_retire()  # it failed at once (halted key)
                return True
            if engine.has_runnable():
                self._dispatch()
        else:
            engine.admit(job, now)
            if engine.has_blocks():
                self._dispatch()
        start_timeout = (
            self._start_timeout if options is None else options.start_timeout_or(self._start_timeout)
        )
        if start_timeout is not None and job.state == QUEUED and job.fn is not None:
            own = options is not None and options.start_timeout is not _UNSET
            self._add_deadline(job, now + start_timeout, own=own)
        return True

    async def _admit_later(self, job: Job) -> None:
        # Await room for ``job`` (max_pending, max_shards), then admit it.
        # Nothing is admitted before that, so a timeout or a cancellation of
        # the awaiting task leaves no trace.
        self._check_can_fit(job.keys)
        loop = self._loop
        assert loop is not None
        timeout = self._config.submit_timeout
        deadline = self._time() + timeout
        waiters = self._room_waiters
        while True:
            if self._time() >= deadline:
                raise self._no_room(job.keys)
            waiter: asyncio.Future[None] = loop.create_future()
            waiters[waiter] = None
            timer = None if math.isinf(timeout) else loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                del waiters[waiter]
                if timer is not None:
                    timer.cancel()
            if self._admit_now(job):
                return

    def _wake_room(self) -> None:
        # Room may have freed (a job started or retired): every waiter
        # re-checks. _admit_later removes its own entry.
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- running -------------------------------------------------------------

    def _dispatch(self) -> None:
        # Start runnable jobs, oldest first, while a concurrency slot is free.
        if self._dispatching:
            return  # re-entered from an eager task; the outer loop goes on
        self._dispatching = True
        try:
            engine = self._engine
            time = self._time
            while True:
                # Runnable exclusive blocks first: they take no slot, so they
                # must not wait behind jobs queued for one.
                while engine.has_blocks():
                    block = engine.take_block(time())
                    if block is None:
                        break
                    self._start(block)
                while self._active < self._max and engine.has_ready():
                    job = engine.take(time())
                    if job is None:
                        break
                    self._start(job)
                # Starting a job can make a block runnable behind the loop
                # above: a job taken with its waiter cancelled or with an
                # error is retired on the spot, and an eager task's job can
                # end inside _start. Its key's next job may be a block, which
                # nothing else would grant (a lost wake-up).
                if not engine.has_blocks():
                    break
        finally:
            self._dispatching = False
        if self._room_waiters:
            self._wake_room()

    def _start(self, job: Job) -> None:
        # ``job`` was just taken by the engine: start it, or hand it to the
        # task waiting for it, or fail it.
        fn = job.fn
        future = job.future
        if job.error is not None:
            self._fail_taken(job)
        elif fn is _inline:
            if future is None:
                # The caller is in _run, between admission and its check of
                # the job's state: it runs the job itself.
                self._active += 1
            elif future.cancelled():
                self._engine.release(job, CANCELLED)
            else:
                self._active += 1
                future.set_result(None)
        elif fn is None:
            # An exclusive block: held by its caller, takes no slot. A None
            # future: the caller is in _enter_block, as above.
            if future is None:
                pass
            elif future.cancelled():
                self._engine.release(job, CANCELLED)
            else:
                future.set_result(None)
        else:
            self._active += 1
            loop = self._loop
            assert loop is not None
            task = _create_task(loop, self._run_task(job, future), future._kd_context)
            if not task.done():
                # An eager task may have run to its end inside create_task,
                # its discard from _tasks done already: kept, it would stay.
                self._tasks.add(task)

    def _fail_taken(self, job: Job) -> None:
        # ``job`` was taken with ``error`` set (start deadline passed, or a
        # halted key): it must fail instead of running.
        error = job.error
        assert error is not None
        outcome = outcome_of(error)
        future = job.future
        if future is None:
            pass  # an inline caller in _run: it raises job.error itself
        elif future.cancelled():
            outcome = CANCELLED
        else:
            future.set_exception(error)
        self._engine.release(job, outcome)

    async def _run_task(self, job: Job, future: _JobFuture[Any]) -> None:
        # The body of a submit* job's task. Every exception of the job goes
        # to its future, so the task itself never ends in an exception that
        # nobody retrieves.
        task = _current_task()
        assert task is not None
        job.future = None  # no reference cycle future -> job -> future
        try:
            if future.cancelled():
                # Cancelled after it was taken, before this first step.
                self._finish(task, job, CANCELLED, None)
                return
            future._kd_task = task
            fn = job.fn
            args = job.args
            kwargs = job.kwargs
            retriable = job.options is not None or self._retry is not None
            if not retriable:
                job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
            log_start(job.keys, job.waited, self._wait_warning, job.seq)
            self._holders[task] = job
            if self._engine.timings is not None:
                job.started = self._time()
            try:
                result = await fn(*args, **kwargs)  # type: ignore[misc]
            except CancelledError:
                if not future.done():
                    # Cancelled by someone else than its future (the loop
                    # shutting down): the future tells the same story.
                    _future_cancel(future)
                self._finish(task, job, CANCELLED, None)
            except GeneratorExit as stop:
                if _get_running_loop() is not self._loop:
                    # The task is being destroyed with a loop that was never
                    # drained: nothing can run any more; let it go.
                    raise
                # Raised by the job itself: a failure like any other, or
                # its future never resolves and its key stays blocked.
                if not future.done():
                    future.set_exception(stop)
                self._finish(task, job, FAILED, stop)
            except BaseException as exc:
                delay = self._retry_delay(job, exc, self._time()) if retriable else None
                if delay is not None and not future.done():
                    # Retried: this task ends; the next attempt gets its own.
                    future._kd_task = None
                    job.future = future
                    self._backoff(task, job, exc, delay)
                    return
                if retriable:
                    self._final_failure(job, exc, fn, args, kwargs)  # type: ignore[arg-type]
                if not future.done():
                    future.set_exception(exc)
                self._finish(task, job, FAILED, exc)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    # As asyncio tasks do: these stop the loop. Any other
                    # exception is the future's alone; re-raised, it would
                    # also fail the task, which nobody awaits.
                    raise
            else:
                if not future.done():
                    future.set_result(result)
                self._finish(task, job, COMPLETED, None)
        finally:
            self._tasks.discard(task)

    def _backoff(self, task: asyncio.Task[Any] | None, job: Job, error: BaseException, delay: float) -> None:
        # ``job``'s attempt failed and is retried in ``delay`` seconds: it
        # keeps its keys, gives its slot back, and becomes runnable again
        # when the timer fires (a run* caller waits for the grant).
        if job.failure is not None and error.__context__ is None and error is not job.failure:
            error.__context__ = job.failure
        job.failure = error
        if task is not None:
            self._holders.pop(task, None)
        self._active -= 1
        if job.started is not None:
            self._ran(job)
        self._engine.backoff(job)
        loop = self._loop
        assert loop is not None
        loop.call_at(self._time() + delay, self._retry_due, job)
        self._after_retire()

    def _retry_due(self, job: Job) -> None:
        # The backoff of ``job`` is over (unless a cancel retired it).
        if self._engine.ready_again(job, self._time()):
            self._after_retire()

    def _finish(
        self, task: asyncio.Task[Any] | None, job: Job, outcome: int, error: BaseException | None
    ) -> None:
        # A started job (run* or submit*) ended: free its slot, retire it,
        # start what can start.
        if task is not None:
            self._holders.pop(task, None)
        self._active -= 1
        if job.started is not None:
            self._ran(job)
        self._retire(job, outcome, error)

    def _retire(self, job: Job, outcome: int, error: BaseException | None) -> None:
        # The rest of _finish, once the job's slot is free: retire it, start
        # what can start.
        engine = self._engine
        if self._dispatching:
            # Ended while a job was being started (in an eager task's first
            # step): the starting loop goes on with what can start; taking
            # here would nest a chain of such jobs one call deeper per job.
            engine.release(job, outcome, error)
        else:
            # The slot just freed goes to the next job at once: for a key's
            # chain, without a trip through the ready heap. Started as by
            # _dispatch, under its guard.
            following = engine.finish(job, outcome, error, self._time())
            if following is not None:
                self._dispatching = True
                try:
                    self._start(following)
                finally:
                    self._dispatching = False
        if engine.has_runnable():
            self._dispatch()
        elif self._room_waiters:
            self._wake_room()
        if self._closed and engine.idle():
            self._drained()

    def _ran(self, job: Job) -> None:
        # metrics=True: record the run time of the attempt (or block) that
        # just ended.
        timings = self._engine.timings
        assert timings is not None
        assert job.started is not None
        timings.run.add(self._time() - job.started)
        job.started = None

    def _after_retire(self) -> None:
        # A job left the queues without a slot changing hands.
        engine = self._engine
        if engine.has_blocks() or (self._active < self._max and engine.has_ready()):
            self._dispatch()
        elif self._room_waiters:
            self._wake_room()
        if self._closed and engine.idle():
            self._drained()

    # -- cancellation and start deadlines ------------------------------------

    def _on_cancel(self, future: _JobFuture[Any], msg: Any) -> None:
        # Called by _JobFuture.cancel after the future became cancelled.
        job = future._kd_job
        if job.state in (QUEUED, BACKOFF):
            self._engine.kill(job, CANCELLED)
            job.future = None
            job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
            job.failure = None
            self._after_retire()
        elif job.state == RUNNING:
            task = future._kd_task
            if task is not None:
                task.cancel(msg)
            # Else its task has not taken its first step; it sees the cancel.

    def _add_deadline(self, job: Job, deadline: float, *, own: bool = False) -> None:
        if self._deadlines.add(job, deadline, own=own) and (
            self._timer is None or deadline < self._timer_due
        ):
            self._arm_timer(deadline)

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_at(when, self._expire)
        self._timer_due = when

    def _expire(self) -> None:
        # The timer of the earliest start deadline fired. Fail every overdue
        # job, even one whose key is busy with an earlier job: a stale order
        # must not fire late.
        self._timer = None
        deadlines = self._deadlines
        expired = deadlines.pop_due(self._time())
        for job in expired:
            self._kill_queued(job, TIMED_OUT, self._start_timeout_error(job))
        due = deadlines.next_due()
        if due is not None:
            self._arm_timer(due)
        if expired:
            self._after_retire()

    def _kill_queued(self, job: Job, outcome: int, error: BaseException) -> None:
        # Retire a queued job and fail whoever waits for it (its future, or
        # the task waiting in run*/exclusive), unless that was cancelled.
        future = job.future
        if future.cancelled():
            outcome = CANCELLED
        self._engine.kill(job, outcome)
        job.future = None
        job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        if not future.done():
            future.set_exception(error)

    # -- exclusive blocks ------------------------------------------------------

    def exclusive(self, keys: Iterable[Hashable], timeout: float | None = 30.0) -> _Exclusive:
        """Hold ``keys`` in the calling task for the duration of an ``async with`` block.

        The migration path from a map of ``asyncio.Lock``: the block is
        admitted like a job on ``keys`` when the ``async with`` is entered,
        waits for every earlier job sharing a key to finish, then runs in the
        calling task; later jobs on those keys wait until it exits. It takes
        no concurrency slot. A block that raises counts as a failed job (it
        halts its keys with ``halt_on_error``); a cancelled one does not.

        Args:
            keys: the keys to hold (a collection, as for submit_multi).
            timeout: seconds to wait for the turn; None waits for ever.

        The errors below are raised on entering the block.

        Raises:
            StartTimeout: the turn did not come within ``timeout``; the block
                gave its place up and did not run.
            RuntimeError: the calling task already holds a key of this
                dispatcher (inside a ``run`` job or another block).
            KeyHalted: a key is halted (``halt_on_error``).
            DispatcherClosed: the dispatcher closed before the turn came.
            ShardsExhausted, SubmitTimeout: as :meth:`submit`.
            ValueError, TypeError: bad keys or timeout.
        """
        wanted = normalize_keys(keys)
        check_timeout("timeout", timeout)
        return _Exclusive(self, wanted, timeout)

    async def _enter_block(self, keys: tuple[Hashable, ...], timeout: float | None) -> tuple[Job, Any]:
        loop = self._get_loop()
        task = _current_task(loop)
        holders = self._holders
        if task in holders:
            raise self._held_error(holders[task].keys, keys, "task")
        job = Job(keys, None, _NO_ARGS, _NO_KWARGS, None)
        if not self._admit_now(job):
            await self._admit_later(job)
        if job.state != RUNNING:
            if job.error is not None:
                raise job.error
            timer = None
            if timeout is not None:
                timer = loop.call_later(timeout, self._block_timed_out, job, timeout)
            try:
                await self._await_turn(job, loop)
            finally:
                if timer is not None:
                    timer.cancel()
        log_start(keys, job.waited, self._wait_warning, job.seq)
        if task is not None:
            holders[task] = job
        if self._engine.timings is not None:
            job.started = self._time()
        return job, task

    def _block_timed_out(self, job: Job, timeout: float) -> None:
        # An exclusive block's turn did not come in time: it gives its place
        # up (counted as cancelled, as with the thread dispatcher).
        if job.state == QUEUED:
            self._kill_queued(
                job,
                CANCELLED,
                StartTimeout(f"exclusive({KeysText(job.keys)}) did not get its turn within {timeout}s"),
            )
            self._after_retire()

    def _exit_block(self, job: Job, task: Any, outcome: int, error: BaseException | None) -> None:
        if task is not None:
            self._holders.pop(task, None)
        if job.started is not None:
            self._ran(job)
        engine = self._engine
        engine.release(job, outcome, error)
        self._after_retire()

    # -- control ---------------------------------------------------------------

    def _guard(self) -> AbstractContextManager[object]:
        self._check_thread()
        return nullcontext()

    def _workers(self) -> tuple[int, int]:
        return self._active, 0

    def _now(self) -> float:
        return time.monotonic() if self._loop is None else self._time()

    def _poke(self) -> None:
        self._after_retire()

    def options(
        self, *, retry: Retry | None = None, supersede: bool = False, start_timeout: float | None = _UNSET
    ) -> AsyncKeyedOptions:
        """A view whose ``submit*`` and ``run*`` apply these options (see :meth:`KeyedDispatcher.options`)."""
        return AsyncKeyedOptions(self, self._options(retry, supersede, start_timeout))

    def current_job(self) -> JobContext | None:
        """What the calling job (or block) may know of itself; None outside this dispatcher's jobs.

        Raises:
            RuntimeError: called from another thread than the loop's.
        """
        self._check_thread()
        task = _current_task()
        job = self._holders.get(task) if task is not None else None
        if job is None:
            return None
        return JobContext(f"{self._repr_name()}-{job.seq}", job.keys, job.attempt)

    def _repr_name(self) -> str:
        return f"async-{os.getpid()}-{id(self):x}"

    def submit_threadsafe(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> ConcurrentFuture[_T]:
        """Run ``coro_fn(*args, **kwargs)`` on ``key`` from any thread.

        The way in from threads other than the loop's: the job is admitted
        on the loop, in the order of the calls, and run as by :meth:`run`.
        Do not block on the result from the loop's own thread.

        Returns:
            A ``concurrent.futures.Future`` of the result, failing with the
            errors :meth:`run` raises. Cancelling it cancels the job (before
            it starts: it never runs; while it runs: its coroutine is
            cancelled).

        Raises:
            RuntimeError: the dispatcher was never used on a loop yet (use it
                once from its loop, e.g. ``async with``), or its loop is closed.
            DispatcherClosed: the dispatcher is closed.
            TypeError: ``key`` is unhashable or ``coro_fn`` is not callable.
        """
        keys = one_key(key, coro_fn, "coro_fn")
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                "this AsyncKeyedDispatcher is not bound to an event loop yet; use it once from its "
                "loop (for example `async with dispatcher:`) before submit_threadsafe()"
            )
        if self._closed:
            raise DispatcherClosed("the dispatcher is closed; it admits no new jobs")
        coro = self._run(keys, coro_fn, args, kwargs)
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()  # the loop is closed: no "never awaited" warning
            raise

    async def aclose(self, cancel_pending: bool = False) -> None:
        """Stop admitting jobs; optionally cancel the queued ones; drain.

        The asyncio ``shutdown(wait=True)``: later ``submit*``/``run*`` calls
        raise DispatcherClosed, and so do submitters still waiting for room.
        Admitted jobs still run unless ``cancel_pending`` cancels those not
        started: their futures are cancelled, and ``run*`` callers and
        ``exclusive`` blocks still waiting raise DispatcherClosed. Returns
        once every admitted job is retired and its task has ended. Safe to
        call again; cancelling the awaiting task stops the wait, not the
        drain.

        Raises:
            RuntimeError: called from inside a job or block of this
                dispatcher (it would wait for itself), or from another loop.
        """
        loop = self._get_loop()
        task = _current_task(loop)
        if task is not None and (task in self._holders or task in self._tasks):
            raise RuntimeError("aclose() inside a job of this dispatcher would wait for itself")
        self._closed = True
        self._claims = False
        engine = self._engine
        if cancel_pending:
            for job in engine.queued_jobs():
                fn = job.fn
                if fn is _inline or fn is None:
                    self._kill_queued(
                        job, CANCELLED, DispatcherClosed("the dispatcher closed before the job's turn came")
                    )
                else:
                    _future_cancel(job.future)
                    engine.kill(job, CANCELLED)
                    job.future = None
                    job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        # Submitters waiting for room must learn that it will not come.
        self._wake_room()
        self._after_retire()
        if engine.idle():
            self._drained()
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _drained(self) -> None:
        # Closed and nothing admitted is left.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def __aenter__(self) -> AsyncKeyedDispatcher:
        self._get_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<AsyncKeyedDispatcher {self._name!r} {state} running={self._active}/{self._max} "
            f"shards={self._engine.live_keys()}>"
        )


class AsyncKeyedOptions:
    """The view of an AsyncKeyedDispatcher that ``options()`` returns."""

    __slots__ = ("_dispatcher", "_options")

    def __init__(self, dispatcher: AsyncKeyedDispatcher, options: JobOptions) -> None:
        self._dispatcher = dispatcher
        self._options = options

    async def submit(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """:meth:`AsyncKeyedDispatcher.submit` with this view's options."""
        keys = one_key(key, coro_fn, "coro_fn")
        return await self._dispatcher._submit(keys, coro_fn, args, kwargs, self._options)

    async def submit_multi(
        self, keys: Iterable[Hashable], coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """:meth:`AsyncKeyedDispatcher.submit_multi` with this view's options."""
        wanted = many_keys(keys, coro_fn, "coro_fn")
        return await self._dispatcher._submit(wanted, coro_fn, args, kwargs, self._options)

    def run(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, _T]:
        """:meth:`AsyncKeyedDispatcher.run` with this view's options."""
        return self._dispatcher._run(one_key(key, coro_fn, "coro_fn"), coro_fn, args, kwargs, self._options)

    def run_multi(
        self, keys: Iterable[Hashable], coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, _T]:
        """:meth:`AsyncKeyedDispatcher.run_multi` with this view's options."""
        wanted = many_keys(keys, coro_fn, "coro_fn")
        return self._dispatcher._run(wanted, coro_fn, args, kwargs, self._options)


class _Exclusive:
    """The ``async with`` of :meth:`AsyncKeyedDispatcher.exclusive`."""

    __slots__ = ("_dispatcher", "_job", "_keys", "_task", "_timeout")

    def __init__(self, dispatcher: AsyncKeyedDispatcher, keys: tuple[Hashable, ...], timeout: float | None):
        self._dispatcher = dispatcher
        self._keys = keys
        self._timeout = timeout
        self._job: Job | None = None
        self._task: Any = None

    async def __aenter__(self) -> None:
        if self._job is not None:
            raise RuntimeError("this exclusive() block is already entered; call exclusive() again")
        self._job, self._task = await self._dispatcher._enter_block(self._keys, self._timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        job = self._job
        assert job is not None
        if exc is None:
            outcome, error = COMPLETED, None
        elif isinstance(exc, CancelledError):
            outcome, error = CANCELLED, None
        else:
            outcome, error = FAILED, exc
        self._dispatcher._exit_block(job, self._task, outcome, error)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _unbound() -> NoReturn:
    raise AssertionError("the dispatcher's clock and futures are used only after it is bound to a loop")
