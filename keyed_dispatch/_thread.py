"""KeyedDispatcher: per-key ordered dispatch on a thread pool."""

from __future__ import annotations

import heapq
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures import _base as _futures_base
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ._config import check_timeout, wait_seconds
from ._engine import (
    BACKOFF,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    SUPERSEDED,
    TIMED_OUT,
    Engine,
    Job,
    outcome_of,
)
from ._errors import DispatcherClosed, StartTimeout
from ._future import LIGHT as _LIGHT_FUTURE
from ._future import PENDING as _PENDING
from ._future import FutureCondition
from ._keys import KeysText, check_hashable, normalize_keys
from ._policies import _UNSET, JobContext, JobOptions, Retry
from ._runner import Runner, StartDeadlines, log_start, many_keys, one_key

if TYPE_CHECKING:
    # Imported by the async methods themselves: a thread-only program does
    # not pay for importing asyncio (about 80 ms).
    import asyncio

__all__ = ["KeyExecutor", "KeyedDispatcher", "KeyedFuture", "KeyedOptions"]

_T = TypeVar("_T")

_monotonic = time.monotonic
_yield_gil = partial(time.sleep, 0)


# The outcome of an attempt that failed and will be retried (not an engine outcome).
_RETRY = -1

# The keyword arguments of every job submitted without any: a queued job
# then keeps no empty dict of its own (64 bytes). Never mutated.
_NO_KWARGS: dict[str, Any] = {}

# Shared by every submit without options: nothing superseded.
_NONE_SUPERSEDED: list[tuple[Any, BaseException]] = []


class _NoRoomError(Exception):
    """Internal: ``_submit`` was told not to wait for room, or to abort."""


def _acquire_holding_gil(lock: threading.Lock) -> None:
    # Take ``lock``, contended, without ever blocking in acquire(). A thread
    # blocked there is woken owning the lock and then waits for the GIL (up
    # to the 5 ms switch interval) while holding it; the running thread
    # blocks on the lock at once, and the two hand lock and GIL back and
    # forth on every job: a lock convoy, measured at 3.9 context switches
    # and 35 us per job for one busy key on 2 cores (0.01 switches pinned
    # to one core). Trying only while holding the GIL, and yielding the GIL
    # in between so that the owner can finish, keeps the lock with running
    # threads. Callers hold it only for short bookkeeping that never blocks.
    while not lock.acquire(False):
        _yield_gil()


class KeyedFuture(Future[_T]):
    """The future of a dispatched job: a ``concurrent.futures.Future``.

    ``cancel()`` on a job that has not started returns True, the job never
    runs, and its keys move on to their next jobs at once (a multi-key job
    waiting on one key does not hold back its other keys). A running job
    cannot be cancelled, as with the standard library.
    """

    # Class defaults: a KeyedFuture made outside a dispatcher (a user's fake)
    # is a plain Future.
    _kd_job: Job | None = None
    _kd_owner: KeyedDispatcher | None = None

    def __init__(self) -> None:
        if not _LIGHT_FUTURE:
            super().__init__()
            return
        # Future.__init__'s fields, with a condition made only when a thread
        # first blocks on this future (see _future.py).
        self._condition = FutureCondition()  # type: ignore[assignment]
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list[Callable[[Future[_T]], object]] = []

    def result(self, timeout: float | None = None) -> _T:
        """As ``Future.result``; raises RuntimeError where the wait can only deadlock.

        A job that waits for a later job of one of its own keys waits for
        ever (that job starts after this one ends), as a ``ThreadPoolExecutor``
        job waiting on a job queued behind it in a one-thread pool would.
        That case is detected and refused at once.
        """
        owner = self._kd_owner
        if owner is not None:
            owner._check_wait(self._kd_job)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``, with the deadlock check of :meth:`result`."""
        owner = self._kd_owner
        if owner is not None:
            owner._check_wait(self._kd_job)
        return super().exception(timeout)

    def cancel(self) -> bool:
        if not super().cancel():
            owner = self._kd_owner
            job = self._kd_job
            # A job between two attempts (its future is running since the
            # first) can still be cancelled: see _cancel_retry.
            if owner is None or job is None or not job.attempt or job.state not in (BACKOFF, QUEUED):
                return False
            return owner._cancel_retry(job, self)
        owner = self._kd_owner
        job = self._kd_job
        if job is not None and (owner is None or owner._on_cancel(job)):
            # No worker will meet this job, so make the call a worker would
            # make (as ThreadPoolExecutor's does): it wakes the waiters of
            # concurrent.futures.wait() and as_completed(), which cancel()
            # alone does not.
            self.set_running_or_notify_cancel()
        return True


def _cancel_running_future(future: Future[Any]) -> bool:
    # Cancel a future that is RUNNING, as Future.cancel() followed by
    # set_running_or_notify_cancel() would a pending one. The standard
    # Future cannot be cancelled once running; a job waiting for a retry
    # has a running future but no running attempt, and must be cancellable.
    # This touches Future's private state, the same fields in 3.10-3.13.
    with future._condition:
        if future._state != _futures_base.RUNNING:
            return False
        future._state = _futures_base.CANCELLED_AND_NOTIFIED
        for waiter in future._waiters:
            waiter.add_cancelled(future)
        future._condition.notify_all()
    future._invoke_callbacks()  # type: ignore[attr-defined]
    return True


class _Worker:
    __slots__ = ("holding", "job", "running", "take", "wake")

    def __init__(self) -> None:
        # A Lock used as a binary semaphore: released to hand the worker a
        # job (``job``), to send it for the oldest runnable job (``take``),
        # or to tell it to exit (``job`` stays None, ``take`` False).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.job: Job | None = None
        self.take = False
        # The keys of the job running now (for error messages only).
        self.holding: tuple[Hashable, ...] = ()
        # The job running now (current_job()).
        self.running: Job | None = None


class KeyedDispatcher(Runner):
    """Run jobs on a thread pool, one at a time and in order per key.

    Jobs that share a key never overlap and start in admission order (the
    order in which ``submit*`` calls return). Jobs whose keys are disjoint
    run concurrently on up to ``max_workers`` threads, and no worker idles
    while an admitted job could run. Unlike ``ThreadPoolExecutor`` plus a
    lock per key, nothing blocks a submitting thread but admission limits,
    same-key jobs cannot overtake each other, and multi-key jobs cannot
    deadlock.

    Arguments left as None take their value from
    :meth:`DispatcherConfig.from_env` (or from ``config`` when given).

    Args:
        max_workers: worker threads at most; they start lazily and exit
            after ``idle_timeout`` seconds idle.
        max_shards: keys with pending or running work at most. A submit on a
            new key waits for a shard to free, then raises ShardsExhausted.
        submit_timeout: seconds a submit waits for room (shards,
            ``max_pending``) before raising; ``math.inf`` waits for ever.
        start_timeout: seconds after admission after which a job that has not
            started fails with StartTimeout instead of running.
        max_pending: admitted jobs not yet started, at most (backpressure).
        wait_warning: a job that waited this long to start is logged at
            WARNING; None disables.
        halt_on_error: a job that raises halts its keys: their pending and
            later jobs fail with KeyHalted until :meth:`resume`.
        retry: the :class:`Retry` policy of every job (``options()`` sets
            one per submission); None: a failed job fails at once.
        dead_letter: called with a :class:`DeadLetter` when a job with a
            retry policy fails for good, outside the dispatcher's lock; what
            it raises is logged.
        name: prefix of the worker thread names; the ``dispatcher`` label
            of its metrics.
        metrics: record the wait and run histograms of :meth:`stats`
            (``wait``, ``run``), which the exporters of
            :mod:`keyed_dispatch.metrics` need. Off, the dispatcher pays
            nothing for them.
        config: the base settings instead of the environment's.

    Raises:
        ValueError: a setting is out of range (ConfigError).
        TypeError: a setting has the wrong type.
    """

    # __init__ is Runner's: the settings are the same for every runner.

    def _setup(self) -> None:
        self._local = threading.local()
        self._init_state()
        _live_dispatchers.add(self)

    def _init_state(self) -> None:
        # Everything that a forked child must not inherit is created here.
        self._lock = threading.Lock()
        # Submitters waiting for room (shards, max_pending), and shutdown
        # waiting for the drain, share the lock; so does the deadline timer.
        self._room = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._timer_cond = threading.Condition(self._lock)
        self._room_waiters = 0
        self._engine = Engine(halt_on_error=self._halt_on_error, metrics=self._metrics)
        self._idle: list[_Worker] = []
        # Workers woken to take a runnable job that have not taken one yet
        # (see _dispatch_locked).
        self._coming = 0
        self._threads: set[threading.Thread] = set()
        # Idents of this dispatcher's worker threads: user code running in
        # one of them is a job (or its done-callback) that holds its keys.
        self._worker_threads: dict[int, _Worker] = {}
        # Workers that left the pool but may not have ended yet: shutdown
        # joins them too, so that no thread of ours outlives it.
        self._exiting: list[threading.Thread] = []
        self._nworkers = 0
        self._spawned = 0
        self._deadlines = StartDeadlines()
        # Jobs waiting for a retry: (due, seq, job), a heap.
        self._backoffs: list[tuple[float, float, Job]] = []
        self._timer: threading.Thread | None = None

    # -- submission --------------------------------------------------------

    def submit(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> KeyedFuture[_T]:
        """Schedule ``fn(*args, **kwargs)`` to run on ``key``.

        The job starts once every job admitted earlier on ``key`` has
        finished (completed, failed, cancelled or timed out before start),
        and it runs concurrently with jobs of other keys. Admission is the
        return of this call; it may wait up to ``submit_timeout`` for room.

        Returns:
            A future for the result. Cancelling it before the job starts
            means the job never runs.

        Raises:
            TypeError: ``key`` is unhashable or ``fn`` is not callable.
            ShardsExhausted: ``key`` needs a new shard and none freed in time.
            SubmitTimeout: ``max_pending`` jobs stayed queued too long.
            DispatcherClosed: after :meth:`shutdown`.
        """
        return self._submit(one_key(key, fn, "fn"), fn, args, kwargs or _NO_KWARGS)

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> KeyedFuture[_T]:
        """Schedule one job that is ordered on every key in ``keys``.

        The job is placed in the queue of each key in one atomic step and
        starts when it is first in all of them, so it never overlaps another
        job sharing any of its keys. Deadlock is impossible by construction,
        whatever the order of the keys. Duplicate keys count once.

        Raises:
            ValueError: ``keys`` is empty.
            TypeError: ``keys`` is a string or holds an unhashable key, or
                ``fn`` is not callable.
            ShardsExhausted, SubmitTimeout, DispatcherClosed: as :meth:`submit`.
        """
        return self._submit(many_keys(keys, fn, "fn"), fn, args, kwargs or _NO_KWARGS)

    def options(
        self, *, retry: Retry | None = None, supersede: bool = False, start_timeout: float | None = _UNSET
    ) -> KeyedOptions:
        """A view whose ``submit`` and ``submit_multi`` apply these options to their jobs.

        ``submit(key, fn, /, *args, **kwargs)`` passes its keyword arguments
        to ``fn``, so per-submission options need a door of their own::

            d.options(retry=Retry(3), supersede=True).submit(key, fn, *args)

        Args:
            retry: this job's retry policy instead of the dispatcher's.
            supersede: the job supersedes every earlier job that also opted
                in, has not started, and whose keys are all among its keys:
                those never run and fail with :class:`Superseded`. A running
                job is never touched; a job that did not opt in is never
                superseded.
            start_timeout: this job's start timeout instead of the
                dispatcher's (None: no limit).

        Raises:
            TypeError, ValueError: a bad option.
        """
        return KeyedOptions(self, self._options(retry, supersede, start_timeout))

    def _submit(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., _T] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        wait: bool = True,
        abort: threading.Event | None = None,
        options: JobOptions | None = None,
    ) -> KeyedFuture[_T]:
        # ``wait=False``: raise _NoRoomError instead of waiting for room.
        # ``abort``: once set, raise _NoRoomError instead of admitting (checked
        # under the lock, before admission and after each wait).
        future: KeyedFuture[_T] = KeyedFuture()
        job = Job(keys, fn, args, kwargs, future, options=options)
        future._kd_job = job
        future._kd_owner = self
        config = self._config
        engine = self._engine
        spawn: list[Job] | None = None
        superseded: list[tuple[Any, BaseException]] = _NONE_SUPERSEDED
        lock = self._lock
        if not lock.acquire(False):
            _acquire_holding_gil(lock)
        try:
            if self._closed:
                raise DispatcherClosed("the dispatcher is shut down; it admits no new jobs")
            if not engine.fits(keys, config.max_shards, config.max_pending):
                if not wait:
                    raise _NoRoomError
                self._wait_for_room_locked(keys, abort)
            elif abort is not None and abort.is_set():
                raise _NoRoomError
            now = _monotonic()
            if options is not None:
                spawn, superseded = self._admit_with_options_locked(job, options, now)
            else:
                idle = self._idle
                if idle and fn is not None and not self._coming and not engine.has_ready():
                    # The fast path of an idle pool: a job that can start now
                    # goes straight to an idle worker, without the ready heap.
                    if engine.admit_started(job, now):
                        worker = idle.pop()
                        worker.job = job
                        worker.wake.release()
                        return future
                else:
                    engine.admit(job, now)
                if fn is not None and config.start_timeout is not None and job.state == QUEUED:
                    self._add_deadline_locked(job, now + config.start_timeout)
                if engine.has_runnable():
                    spawn = self._dispatch_locked()
        finally:
            lock.release()
        if spawn:
            self._spawn(spawn)
        for victim, error in superseded:
            victim.set_exception(error)
        return future

    def _admit_with_options_locked(
        self, job: Job, options: JobOptions, now: float
    ) -> tuple[list[Job] | None, list[tuple[Any, BaseException]]]:
        # Caller holds the lock; room was found. Admits a job that has
        # options (supersede, a start timeout of its own). Returns the jobs
        # to spawn workers for and the futures of superseded jobs with their
        # errors, both for after the lock is released.
        engine = self._engine
        superseded: list[Job] = []
        if options.supersede:
            for victim in engine.superseded_by(job.keys):
                # As for an expiry (see _expire_loop): settle a racing cancel.
                if victim.future.set_running_or_notify_cancel():
                    engine.kill(victim, SUPERSEDED)
                    superseded.append(victim)
                else:
                    engine.kill(victim, CANCELLED)
        engine.admit(job, now)
        timeout = options.start_timeout_or(self._config.start_timeout)
        if timeout is not None and job.state == QUEUED and job.fn is not None:
            self._add_deadline_locked(job, now + timeout, own=options.start_timeout is not _UNSET)
        return self._after_retire_locked(), self._superseded(superseded, job.keys)

    def _wait_for_room_locked(self, keys: tuple[Hashable, ...], abort: threading.Event | None = None) -> None:
        # Caller holds the lock. Waits (releasing it) until the job fits
        # under max_pending and max_shards, or raises. Nothing is admitted
        # before this returns, so a timeout leaves no trace.
        config = self._config
        engine = self._engine
        self._check_can_fit(keys)
        deadline = _monotonic() + config.submit_timeout
        while True:
            if abort is not None and abort.is_set():
                raise _NoRoomError
            if engine.fits(keys, config.max_shards, config.max_pending):
                return
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise self._no_room(keys)
            self._room_waiters += 1
            try:
                self._room.wait(wait_seconds(remaining))
            finally:
                self._room_waiters -= 1
            if self._closed:
                raise DispatcherClosed("the dispatcher was shut down while the submit waited for room")

    # -- from async code -----------------------------------------------------

    async def submit_async(
        self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """Schedule ``fn(*args, **kwargs)`` on ``key`` from a coroutine.

        :meth:`submit` for async code: admission never blocks the event
        loop. When there is room (the usual case) the job is admitted at
        once, in the calling thread; otherwise the wait for room (up to
        ``submit_timeout``) happens in the loop's default executor while
        the caller awaits. Cancelling the awaiting task during that wait
        leaves no trace (nothing queued, no shard); if the admission had
        just completed, the job is cancelled as by ``future.cancel()``.

        Returns:
            An ``asyncio.Future`` (``asyncio.wrap_future``) of the result;
            cancelling it cancels the job if it has not started.

        Raises:
            As :meth:`submit`.
        """
        return await self._submit_async(one_key(key, fn, "fn"), fn, args, kwargs)

    async def submit_multi_async(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[_T]:
        """:meth:`submit_multi` for async code (see :meth:`submit_async`)."""
        return await self._submit_async(many_keys(keys, fn, "fn"), fn, args, kwargs)

    async def run_async(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` on ``key`` and return its result, from a coroutine.

        ``await d.run_async(key, fn, *args)`` is
        ``await (await d.submit_async(key, fn, *args))``: the job runs on a
        worker thread, in order on its key; the loop stays free. Cancelling
        the awaiting task cancels the job if it has not started; a running
        job runs to its end (threads cannot be interrupted).

        Raises:
            What ``fn`` raises, and as :meth:`submit`.
        """
        return await (await self.submit_async(key, fn, *args, **kwargs))

    async def _submit_async(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> asyncio.Future[_T]:
        import asyncio  # noqa: PLC0415 - already loaded: the caller is a coroutine

        loop = asyncio.get_running_loop()
        try:
            future = self._submit(keys, fn, args, kwargs, wait=False)
        except _NoRoomError:
            future = await self._submit_in_thread(loop, keys, fn, args, kwargs)
        return asyncio.wrap_future(future, loop=loop)

    async def _submit_in_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        keys: tuple[Hashable, ...],
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> KeyedFuture[_T]:
        # The admission waits for room in a thread. If the awaiting task is
        # cancelled, ``abort`` stops that wait (or the admission, if it has
        # not happened yet); ``guard`` decides who cancels a job that was
        # admitted just before the abort: whoever comes second.
        import asyncio  # noqa: PLC0415 - already loaded: the caller is a coroutine

        abort = threading.Event()
        guard = threading.Lock()
        admitted: list[KeyedFuture[_T]] = []

        def admit() -> KeyedFuture[_T]:
            future = self._submit(keys, fn, args, kwargs, abort=abort)
            with guard:
                admitted.append(future)
                if abort.is_set():
                    future.cancel()
            return future

        try:
            return await loop.run_in_executor(None, admit)
        except asyncio.CancelledError:
            with guard:
                abort.set()
                late = admitted[0] if admitted else None
            if late is not None:
                late.cancel()
            else:
                with self._lock:
                    self._room.notify_all()  # the waiting thread sees the abort
            raise

    # -- running -----------------------------------------------------------

    def _dispatch_locked(self) -> list[Job] | None:
        # Caller holds the lock. Send an idle worker for each runnable job
        # that no worker is on its way for yet, then claim new workers for
        # what is left, up to max_workers. Returns the jobs that need a new
        # thread (started by the caller, after releasing the lock: starting
        # a thread is slow).
        #
        # A woken worker takes the oldest runnable job when it arrives, not
        # one chosen here: until then a busy worker that finishes may take
        # that job itself, and later runnable jobs count the worker already
        # on its way instead of waking one more. No runnable job waits
        # longer than a hand-off while a worker idles, as when each job is
        # handed out; but when releases come faster than a thread wakes (a
        # multi-key job's end makes several jobs runnable), one wake-up
        # serves them, where one per job cost 0.27 wake-ups and about
        # 10 us of CPU per no-op job (benchmarks.suite --only multi).
        engine = self._engine
        if engine.has_blocks():
            self._grant_blocks_locked()
        idle = self._idle
        spawn: list[Job] | None = None
        # Taking a job makes no block runnable: the grant above holds.
        while engine.ready_count() > self._coming:
            if idle:
                worker = idle.pop()
                worker.take = True
                self._coming += 1
                worker.wake.release()
                continue
            if self._nworkers >= self._config.max_workers:
                break
            job = engine.take(_monotonic())
            if job is None:
                break
            self._nworkers += 1
            if spawn is None:
                spawn = []
            spawn.append(job)
        return spawn

    def _grant_blocks_locked(self) -> None:
        # Caller holds the lock. A runnable exclusive block holds its keys in
        # the caller's thread and takes no worker, so it is granted at once,
        # even when every worker is busy (it used to queue in ``ready`` for a
        # worker and could time out on a free key).
        engine = self._engine
        while True:
            job = engine.take_block(_monotonic())
            if job is None:
                return
            # Nobody but exclusive() sees this future, so resolving it under
            # the lock cannot run user callbacks here. The caller may have
            # cancelled it (its wait timed out) and be queued on our lock in
            # _on_cancel: then the block is retired here, as cancelled.
            future = job.future
            if not future.set_running_or_notify_cancel():
                engine.release(job, CANCELLED)
            elif job.error is not None:
                future.set_exception(job.error)
                engine.release(job, FAILED)
            else:
                future.set_result(None)

    def _spawn(self, jobs: list[Job]) -> None:
        # Start one worker thread per job; each was counted in _nworkers by
        # _dispatch_locked when the job was taken.
        for job in jobs:
            worker = _Worker()
            with self._lock:
                if self._exiting:
                    self._exiting = [t for t in self._exiting if t.is_alive()]
                self._spawned += 1
                thread = threading.Thread(
                    target=self._work, args=(worker, job), name=f"{self._name}_{self._spawned}"
                )
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:
                # No thread could be started (resource limits, interpreter
                # shutdown). The job was taken, so fail it rather than lose
                # it silently; its keys move on.
                self._fail_unstarted(job, thread, exc)

    def _fail_unstarted(self, job: Job, thread: threading.Thread, exc: RuntimeError) -> None:
        future = job.future
        job.future = None
        job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        outcome = CANCELLED
        if future.set_running_or_notify_cancel():
            future.set_exception(exc)
            outcome = FAILED
            job.error = exc  # counted in stats().failures by its type
        with self._lock:
            self._nworkers -= 1
            self._threads.discard(thread)
            self._engine.release(job, outcome)
            spawn = self._after_retire_locked()
        if spawn:
            self._spawn(spawn)

    def _work(self, worker: _Worker, job: Job | None) -> None:
        # The worker loop. Hot path: run a job, then one lock acquisition
        # to retire it and take the next (Engine.finish). User code always
        # runs outside the lock.
        lock = self._lock
        engine = self._engine
        finish = engine.finish
        timings = engine.timings
        idle = self._idle
        config = self._config
        max_workers = config.max_workers
        idle_wait = wait_seconds(config.idle_timeout)
        idle_timeout = -1 if idle_wait is None else idle_wait  # Lock.acquire's "no limit"
        self._worker_threads[threading.get_ident()] = worker
        try:
            while True:
                if job is None:
                    if worker.wake.acquire(timeout=idle_timeout):
                        # Whoever released ``wake`` set ``worker.job`` first
                        # and took us off the idle list, both under the
                        # lock; the release orders those writes before this
                        # read, so the hand-off needs no lock here.
                        job = worker.job
                        worker.job = None
                        if job is None and not worker.take:  # told to exit by shutdown
                            with lock:
                                self._exit_locked()
                            return
                    else:
                        with lock:
                            job = worker.job
                            worker.job = None
                            if job is None and not worker.take:
                                # Idle too long (or told to exit by a
                                # shutdown that already emptied ``idle``).
                                if worker in idle:
                                    idle.remove(worker)
                                self._exit_locked()
                                return
                        # Woken just as the wait timed out: the hand-off
                        # released ``wake``; re-arm it.
                        worker.wake.acquire()
                    if job is None:
                        # Sent for the oldest runnable job (_dispatch_locked).
                        if not lock.acquire(False):
                            _acquire_holding_gil(lock)
                        try:
                            worker.take = False
                            self._coming -= 1
                            job = engine.take(_monotonic())
                            if job is None:
                                # A busy worker took it first.
                                if not self._rest_locked(worker):
                                    return
                                continue
                        finally:
                            lock.release()
                # Run it. The future leaves the job first: no reference
                # cycle future -> job -> future, and fn/args are freed as
                # soon as the call returns, even if the caller keeps the
                # future. A job that may be retried keeps them until its
                # last attempt.
                future = job.future
                fn = job.fn
                args = job.args
                kwargs = job.kwargs
                retriable = job.options is not None or self._retry is not None
                if not retriable:
                    job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
                error: BaseException | None = None
                started: float | None = None
                worker.holding = job.keys
                worker.running = job
                # A retry's future is running since the first attempt; a
                # cancel between attempts retired the job (_cancel_retry).
                if job.attempt == 1 and not future.set_running_or_notify_cancel():
                    outcome = CANCELLED
                elif job.error is not None:
                    future.set_exception(job.error)
                    outcome = outcome_of(job.error)
                else:
                    log_start(job.keys, job.waited, config.wait_warning, job.seq)
                    if timings is not None:
                        started = _monotonic()
                    try:
                        result = fn(*args, **kwargs)  # type: ignore[misc]
                    except BaseException as exc:  # noqa: BLE001 - the job's error belongs to its future
                        delay = self._retry_delay(job, exc, _monotonic()) if retriable else None
                        if delay is not None:
                            if job.failure is not None and exc.__context__ is None and exc is not job.failure:
                                exc.__context__ = job.failure
                            job.failure = exc
                            outcome = _RETRY
                            error = None
                        else:
                            if retriable:
                                self._final_failure(
                                    job,
                                    exc,
                                    fn,  # type: ignore[arg-type]
                                    args,
                                    {} if kwargs is _NO_KWARGS else kwargs,
                                )
                            future.set_exception(exc)
                            outcome = FAILED
                            error = exc
                    else:
                        future.set_result(result)
                        outcome = COMPLETED
                worker.running = None
                if retriable and outcome != _RETRY:
                    job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
                # Drop references before waiting for the next job, so that
                # an idle worker pins no result, exception or arguments.
                del future, fn, args, kwargs
                result = None
                spawn = None
                if not lock.acquire(False):
                    _acquire_holding_gil(lock)
                try:
                    if started is not None and timings is not None:
                        timings.run.add(_monotonic() - started)
                    if outcome == _RETRY:
                        self._backoff_locked(job, delay)  # type: ignore[arg-type]
                        job = engine.take(_monotonic())
                    else:
                        job = finish(job, outcome, error, _monotonic(), self._coming)
                    error = None
                    if engine.has_blocks():
                        self._grant_blocks_locked()
                    if engine.has_ready() and (idle or self._nworkers < max_workers):
                        spawn = self._dispatch_locked()
                    if self._room_waiters:
                        self._room.notify_all()
                    if job is None and not self._rest_locked(worker):
                        return
                finally:
                    lock.release()
                if spawn:
                    self._spawn(spawn)
        finally:
            self._worker_threads.pop(threading.get_ident(), None)

    def _rest_locked(self, worker: _Worker) -> bool:
        # Caller holds the lock; ``worker`` found no job to run. It joins the
        # idle list, or, once the dispatcher is closed and drained, exits:
        # returns False then, and the worker thread ends.
        if self._closed and self._engine.idle():
            self._drained_locked()
            self._exit_locked()
            return False
        self._idle.append(worker)
        return True

    def _exit_locked(self) -> None:
        # Caller holds the lock; the calling worker thread is about to end.
        self._nworkers -= 1
        thread = threading.current_thread()
        self._threads.discard(thread)
        self._exiting.append(thread)

    def _drained_locked(self) -> None:
        # Caller holds the lock; closed and nothing admitted is left. Wake
        # idle workers so that they exit, and anyone waiting in shutdown.
        for worker in self._idle:
            worker.job = None
            worker.wake.release()
        self._idle.clear()
        self._drained.notify_all()
        self._timer_cond.notify_all()

    # -- cancellation and start deadlines -----------------------------------

    def _on_cancel(self, job: Job) -> bool:
        # Called by KeyedFuture.cancel after the future became CANCELLED.
        # True if the job was retired here, so nobody else will notify the
        # future's waiters.
        with self._lock:
            if not self._engine.kill(job, CANCELLED):
                # Taken by a worker, which sees the cancel itself; or already
                # retired (expired, or cancelled before).
                return False
            job.future = None
            job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
            spawn = self._after_retire_locked()
        if spawn:
            self._spawn(spawn)
        return True

    def _after_retire_locked(self) -> list[Job] | None:
        # Caller holds the lock; a job just left the queues.
        if self._room_waiters:
            self._room.notify_all()
        engine = self._engine
        spawn: list[Job] | None = None
        if engine.has_runnable():
            spawn = self._dispatch_locked()
        # Checked after the dispatch: granting a block whose caller has just
        # cancelled it retires it there, and it may have been the last job.
        if self._closed and engine.idle():
            self._drained_locked()
        return spawn

    def _add_deadline_locked(self, job: Job, deadline: float, *, own: bool = False) -> None:
        self._wake_timer_locked(self._deadlines.add(job, deadline, own=own))

    def _backoff_locked(self, job: Job, delay: float) -> None:
        # Caller holds the lock. ``job``'s attempt failed and is retried in
        # ``delay`` seconds: it keeps its keys and gives its worker back.
        self._engine.backoff(job)
        entry = (_monotonic() + delay, job.seq, job)
        heapq.heappush(self._backoffs, entry)
        self._wake_timer_locked(self._backoffs[0] is entry)

    def _wake_timer_locked(self, earliest: bool) -> None:
        # Caller holds the lock. A deadline or retry was added; ``earliest``:
        # it may be due before the timer's current wait ends.
        if self._timer is None:
            self._timer = threading.Thread(
                target=self._expire_loop, name=f"{self._name}_deadlines", daemon=True
            )
            self._timer.start()
        elif earliest:
            self._timer_cond.notify()

    def _next_timer_locked(self) -> float | None:
        # Caller holds the lock. When the timer thread must next wake.
        due = self._deadlines.next_due()
        backoffs = self._backoffs
        if backoffs and (due is None or backoffs[0][0] < due):
            return backoffs[0][0]
        return due

    def _expire_loop(self) -> None:
        # One thread per dispatcher with start deadlines or retries. It fails
        # overdue jobs even while an earlier job of their key still runs (a
        # stale order must not fire late), and makes jobs whose backoff is
        # over runnable. It runs as a daemon: it never runs user code, and
        # shutdown stops it explicitly.
        lock = self._lock
        deadlines = self._deadlines
        engine = self._engine
        while True:
            expired: list[tuple[Future[Any], BaseException]] = []
            with lock:
                while True:
                    if self._closed and engine.idle():
                        # ``_timer`` stays set: shutdown joins this thread.
                        return
                    due = self._next_timer_locked()
                    if due is None:
                        self._timer_cond.wait()
                        continue
                    now = _monotonic()
                    if due > now:
                        self._timer_cond.wait(wait_seconds(due - now))
                        continue
                    backoffs = self._backoffs
                    while backoffs and backoffs[0][0] <= now:
                        # Its backoff is over: runnable again, first in line
                        # (unless a cancel retired it meanwhile).
                        engine.ready_again(heapq.heappop(backoffs)[2], now)
                    for job in deadlines.pop_due(now):
                        future = job.future
                        job.future = None
                        job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
                        # Marking the future running first settles a race
                        # with its cancel(): from here on it cannot be
                        # cancelled, and if it was, this call wakes its
                        # waiters (see KeyedFuture) and it counts as such.
                        if future.set_running_or_notify_cancel():
                            engine.kill(job, TIMED_OUT)
                            expired.append((future, self._start_timeout_error(job)))
                        else:
                            engine.kill(job, CANCELLED)
                    break
                spawn = self._after_retire_locked()
            if spawn:
                self._spawn(spawn)
            for future, error in expired:
                future.set_exception(error)

    # -- exclusive blocks ----------------------------------------------------

    @contextmanager
    def exclusive(self, keys: Iterable[Hashable], timeout: float | None = 30.0) -> Iterator[None]:
        """Hold ``keys`` in the calling thread for the duration of the block.

        The migration path from a lock manager: the block is admitted like a
        job on ``keys``, waits for every earlier job sharing a key to finish,
        then runs in the calling thread; jobs admitted later on those keys
        wait until the block exits. It takes no worker thread.

        Args:
            keys: the keys to hold (a collection, as for submit_multi).
            timeout: seconds to wait for the turn; None waits for ever.

        Raises:
            StartTimeout: the turn did not come within ``timeout``; the block
                gave its place up and did not run.
            RuntimeError: the calling thread already holds a key of this
                dispatcher (inside a job or another block). Waiting would
                deadlock; pass all the keys in one call instead.
            KeyHalted: a key is halted (``halt_on_error``).
            DispatcherClosed: the dispatcher shut down before the turn came.
            ShardsExhausted, SubmitTimeout: as :meth:`submit`.
        """
        wanted = normalize_keys(keys)
        check_timeout("timeout", timeout)
        held = self._held_keys()
        if held is not None:
            raise self._held_error(held, wanted, "thread")
        engine = self._engine
        future: KeyedFuture[None] = self._submit(wanted, None, (), {})
        try:
            try:
                future.result(wait_seconds(timeout))
            except FuturesTimeoutError:
                if future.cancel():
                    raise StartTimeout(
                        f"exclusive({KeysText(wanted)}) did not get its turn within {timeout}s"
                    ) from None
                # Resolved just as the wait timed out: granted (the block is
                # ours) or failed (KeyHalted, raised here).
                future.result()
        except CancelledError:
            raise DispatcherClosed("the dispatcher was shut down before the block's turn came") from None
        job = future._kd_job
        assert job is not None
        log_start(wanted, job.waited, self._config.wait_warning, job.seq)
        self._local.keys = wanted
        timings = engine.timings
        started = _monotonic()
        outcome, error = COMPLETED, None
        try:
            yield
        except BaseException as exc:
            outcome, error = FAILED, exc
            raise
        finally:
            self._local.keys = None
            spawn: list[Job] | None = None
            with self._lock:
                # After a fork inside the block, the child's dispatcher
                # started empty: the block belongs to the parent's engine
                # and has nothing to release here.
                if self._engine is engine:
                    if timings is not None:
                        timings.run.add(_monotonic() - started)
                    engine.release(job, outcome, error)
                    spawn = self._after_retire_locked()
            if spawn:
                self._spawn(spawn)

    # -- control -----------------------------------------------------------

    def executor(self, key: Hashable) -> KeyExecutor:
        """Return a ``concurrent.futures.Executor`` whose jobs run on ``key``.

        ``submit`` and ``map`` keep their Executor semantics, ordered on the
        key; the view works with ``loop.run_in_executor``. Its ``shutdown``
        closes the view only (later submits raise DispatcherClosed) and, with
        ``wait``, waits for the jobs submitted through it.

        Raises:
            TypeError: ``key`` is unhashable.
        """
        check_hashable(key)
        return KeyExecutor(self, key)

    def _guard(self) -> threading.Lock:
        return self._lock

    def _workers(self) -> tuple[int, int]:
        return self._nworkers, len(self._idle)

    def _now(self) -> float:
        return _monotonic()

    def _poke(self) -> None:
        with self._lock:
            spawn = self._after_retire_locked()
        if spawn:
            self._spawn(spawn)

    def _cancel_retry(self, job: Job, future: KeyedFuture[Any]) -> bool:
        # KeyedFuture.cancel of a job between two attempts (in its backoff,
        # or queued for its retry): retire it, then cancel its running
        # future. Once a worker took the retry, the job is RUNNING and this
        # returns False, as for any running job.
        with self._lock:
            if not self._engine.kill(job, CANCELLED):
                return False
            job.future = job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
            job.failure = None
            spawn = self._after_retire_locked()
        if spawn:
            self._spawn(spawn)
        return _cancel_running_future(future)

    def current_job(self) -> JobContext | None:
        """What the calling job may know of itself; None outside this dispatcher's jobs.

        The ``job_id`` is stable across the job's attempts: an idempotency
        key for its side effects. ``attempt`` counts from 1.
        """
        worker = self._worker_threads.get(threading.get_ident())
        job = None if worker is None else worker.running
        if job is None:
            return None
        return JobContext(f"{self._name}-{os.getpid()}-{job.seq}", job.keys, job.attempt)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """Stop admitting jobs; optionally cancel the queued ones; drain.

        Later ``submit*`` calls raise DispatcherClosed. Admitted jobs still
        run unless ``cancel_pending`` cancels those not started (their
        futures are cancelled; ``exclusive`` blocks still waiting raise
        DispatcherClosed). With ``wait``, returns once every admitted job is
        retired and the worker threads have exited. Safe to call again.

        Raises:
            RuntimeError: ``wait=True`` from inside one of this dispatcher's
                jobs, which would wait for itself.
        """
        if wait and self._held_keys() is not None:
            raise RuntimeError("shutdown(wait=True) inside a job of this dispatcher would wait for itself")
        with self._lock:
            self._closed = True
            queued = self._engine.queued_jobs() if cancel_pending else []
            if self._engine.idle():
                self._drained_locked()
            # Submitters waiting for room must learn that it will not come.
            self._room.notify_all()
        for job in queued:
            future = job.future
            if future is not None:
                future.cancel()
        if not wait:
            return
        with self._lock:
            while not self._engine.idle():
                self._drained.wait()
            threads = [*self._threads, *self._exiting]
            timer = self._timer
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join()
        if timer is not None and timer is not current:
            timer.join()

    def _check_wait(self, job: Job | None) -> None:
        # A wait for ``job``'s future from the calling thread: refuse it if
        # the thread holds a key of ``job``, which cannot start before the
        # holder ends (see KeyedFuture.result).
        # The state test first: result() is mostly called on jobs that
        # started or finished, and it must not pay for the held-keys lookup.
        if job is None or job.state not in (QUEUED, BACKOFF):
            return
        held = self._held_keys()
        if held is None:
            return
        shared = set(held).intersection(job.keys)
        if shared:
            raise RuntimeError(
                f"waiting here for a later job of key {KeysText(tuple(shared))} would deadlock: that job "
                "starts only after the job (or exclusive block) holding the key ends"
            )

    def _held_keys(self) -> tuple[Hashable, ...] | None:
        # The keys the calling thread holds in this dispatcher, or None: in
        # a worker thread, user code is a job or its done-callback, which
        # holds the job's keys; in an exclusive block, the block's keys.
        worker = self._worker_threads.get(threading.get_ident())
        if worker is not None:
            return worker.holding
        held: tuple[Hashable, ...] | None = getattr(self._local, "keys", None)
        return held

    def __enter__(self) -> KeyedDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<KeyedDispatcher {self._name!r} {state} workers={self._nworkers}/"
            f"{self._config.max_workers} shards={self._engine.live_keys()}>"
        )

    def _reset_after_fork(self) -> None:
        # In a forked child. The parent's threads do not exist here and its
        # lock may have been held mid-update: start empty, so nothing
        # admitted in the parent runs twice. The futures of the parent's
        # queued jobs are the parent's: here they are detached, so that
        # cancelling one is a plain cancel that leaves our engine alone.
        for job in self._engine.queued_jobs():
            future = job.future
            if future is not None:
                future._kd_owner = None
        self._local = threading.local()
        self._init_state()


class KeyExecutor(Executor):
    """An Executor view of one key of a KeyedDispatcher (see ``executor``)."""

    def __init__(self, dispatcher: KeyedDispatcher, key: Hashable) -> None:
        self._dispatcher = dispatcher
        self._key = key
        self._lock = threading.Lock()
        self._closed = False
        self._futures: set[Future[Any]] = set()

    @property
    def key(self) -> Hashable:
        """The key every job of this view runs on."""
        return self._key

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` on this view's key (see KeyedDispatcher.submit)."""
        with self._lock:
            if self._closed:
                raise DispatcherClosed(f"the executor view of key {self._key} is shut down")
            future = self._dispatcher.submit(self._key, fn, *args, **kwargs)
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close this view; the dispatcher keeps running.

        Args:
            wait: wait for the jobs submitted through this view.
            cancel_futures: cancel those of them not started yet.
        """
        with self._lock:
            self._closed = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            for future in futures:
                try:
                    future.exception()
                except CancelledError:
                    continue


class KeyedOptions:
    """The view of a KeyedDispatcher that ``options()`` returns."""

    __slots__ = ("_dispatcher", "_options")

    def __init__(self, dispatcher: KeyedDispatcher, options: JobOptions) -> None:
        self._dispatcher = dispatcher
        self._options = options

    def submit(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> KeyedFuture[_T]:
        """:meth:`KeyedDispatcher.submit` with this view's options."""
        return self._dispatcher._submit(one_key(key, fn, "fn"), fn, args, kwargs, options=self._options)

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> KeyedFuture[_T]:
        """:meth:`KeyedDispatcher.submit_multi` with this view's options."""
        return self._dispatcher._submit(many_keys(keys, fn, "fn"), fn, args, kwargs, options=self._options)


_live_dispatchers: weakref.WeakSet[KeyedDispatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for dispatcher in list(_live_dispatchers):
        dispatcher._reset_after_fork()


def _at_exit() -> None:
    # Like ThreadPoolExecutor's exit hook: let admitted work finish and the
    # workers end, instead of idle workers holding the interpreter up for
    # idle_timeout (they are not daemons, so that a job is never cut off).
    for dispatcher in list(_live_dispatchers):
        dispatcher.shutdown(wait=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_register_atexit: Callable[[Callable[[], None]], None] | None = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    # Runs before the interpreter joins non-daemon threads (3.9+).
    _register_atexit(_at_exit)
else:  # pragma: no cover - every supported Python has it
    import atexit

    atexit.register(_at_exit)
