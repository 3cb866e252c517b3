"""Both in-process runners behind one synchronous API, for the contract suite.

A contract test is written once against :class:`Runner` and runs against the
thread pool (``KeyedDispatcher``) and the event loop (``AsyncKeyedDispatcher``),
as trio's ``generic_lock_test`` runs against every lock type. The test drives
the runner from its own thread, as it would drive a thread pool:

* ``submit``/``submit_multi`` admit a job and return a
  ``concurrent.futures.Future``; ``cancel()`` on it cancels the job.
* ``stats``, ``resume``, ``halted_keys``, ``exclusive`` and ``shutdown`` are
  the thread dispatcher's methods; for asyncio, ``shutdown`` is ``aclose``.
* A job is a plain function, or is built by :meth:`Runner.job` from steps: a
  function (called with the job's arguments; the last one's result is the
  job's), a :class:`Gate` (wait until the test opens it), a :class:`Barrier`
  (wait until all its parties are there) or a number (work that many
  seconds; 0 only lets other jobs run).

:class:`AsyncioRunner` runs its dispatcher on an event loop in a thread of its
own. Each call crosses into that loop with ``run_coroutine_threadsafe`` and
waits for the answer; a submit's future mirrors the job's ``asyncio.Future``.
Plain functions run as coroutine jobs that call them, and gates and barriers
are awaited there, so that a waiting job never blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeAlias, TypeVar

import pytest

from keyed_dispatch import (
    AsyncKeyedDispatcher,
    DispatcherConfig,
    DispatcherStats,
    JobContext,
    KeyedDispatcher,
    KeyInfo,
)
from keyed_dispatch.testing import OrderRecorder
from tests.helpers import WAIT, close_and_check, new_dispatcher

__all__ = [
    "RUNNERS",
    "AsyncioRunner",
    "Barrier",
    "Gate",
    "Runner",
    "ThreadRunner",
    "declare_cancelled_runs",
    "open_runner",
    "running",
]

RUNNERS = ("thread", "asyncio")

_T = TypeVar("_T")

# How long a call into the event loop may take: longer than any wait a test
# sets up (WAIT), so that the test's own deadline fires first.
_CALL_WAIT = 2 * WAIT

_loop_names = itertools.count(1)


class Gate(ABC):
    """Holds the jobs that reach it until the test opens it.

    ``entered`` is set when a job reaches the gate. A job still waiting
    after WAIT seconds fails with TimeoutError. Every gate of a runner is
    opened when the runner is closed.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._opened = threading.Event()

    def is_open(self) -> bool:
        return self._opened.is_set()

    @abstractmethod
    def open(self) -> None:
        """Let the jobs waiting here go on; from any thread, jobs included."""


class Barrier:
    """Holds each job that reaches it until ``parties`` jobs are there at once.

    Reusable, like ``threading.Barrier``; a job still waiting after WAIT
    seconds fails.
    """

    def __init__(self, parties: int) -> None:
        self.parties = parties


Step: TypeAlias = "Callable[..., Any] | Gate | Barrier | float"


class Runner(ABC):
    """One dispatcher, driven synchronously from the test's threads."""

    kind: str
    # cancel() on the future of a running job cancels the job (asyncio);
    # else it returns False and the job runs to its end.
    cancels_running: bool

    def __init__(self) -> None:
        self._gates: list[Gate] = []

    @abstractmethod
    def submit(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Admit ``fn(*args, **kwargs)`` on ``key``; raises what the dispatcher's submit raises."""

    @abstractmethod
    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Admit one job on every key in ``keys``."""

    @abstractmethod
    def submit_with(
        self, options: dict[str, Any], keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        """``options(**options).submit_multi(keys, fn, *args)``."""

    @abstractmethod
    def stats(self) -> DispatcherStats: ...

    @abstractmethod
    def resume(self, key: Hashable) -> bool: ...

    @abstractmethod
    def pause(self, key: Hashable) -> bool: ...

    @abstractmethod
    def cancel_pending(self, key: Hashable) -> int: ...

    @abstractmethod
    def key_info(self, key: Hashable) -> KeyInfo: ...

    @abstractmethod
    def keys(self, limit: int | None = None) -> list[KeyInfo]: ...

    @abstractmethod
    def current_job(self) -> JobContext | None:
        """The dispatcher's ``current_job()``; call it from inside a job (a plain function)."""

    @abstractmethod
    def halted_keys(self) -> frozenset[Hashable]: ...

    @abstractmethod
    def exclusive(
        self, keys: Iterable[Hashable], timeout: float | None = 30.0
    ) -> AbstractContextManager[None]:
        """Hold ``keys`` for the ``with`` block, entered from the calling thread."""

    @abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """Close the dispatcher; with ``wait``, return once it has drained.

        Without ``wait``, the dispatcher is closed (and the queued jobs
        cancelled, with ``cancel_pending``) when this returns.
        """

    @abstractmethod
    def job(self, *steps: Step) -> Callable[..., Any]:
        """A job made of ``steps`` (see the module docstring)."""

    @abstractmethod
    def _new_gate(self) -> Gate: ...

    @abstractmethod
    def barrier(self, parties: int) -> Barrier: ...

    @abstractmethod
    def _close(self) -> None: ...

    def gate(self) -> Gate:
        gate = self._new_gate()
        self._gates.append(gate)
        return gate

    def close(self) -> None:
        """Open every gate, shut the dispatcher down and check that nothing of it is left."""
        for gate in self._gates:
            gate.open()
        self._close()


# -- the thread pool ---------------------------------------------------------


class _ThreadGate(Gate):
    def open(self) -> None:
        self._opened.set()

    def pass_(self) -> None:
        self.entered.set()
        if not self._opened.wait(WAIT):
            raise TimeoutError("the gate was never opened")


class _ThreadBarrier(Barrier):
    def __init__(self, parties: int) -> None:
        super().__init__(parties)
        self._barrier = threading.Barrier(parties)

    def pass_(self) -> None:
        self._barrier.wait(WAIT)


class ThreadRunner(Runner):
    """A ``KeyedDispatcher`` (see :func:`tests.helpers.new_dispatcher`)."""

    kind = "thread"
    cancels_running = False

    def __init__(self, max_workers: int, **settings: Any) -> None:
        super().__init__()
        self.dispatcher: KeyedDispatcher = new_dispatcher(max_workers, **settings)

    def submit(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self.dispatcher.submit(key, fn, *args, **kwargs)

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self.dispatcher.submit_multi(keys, fn, *args, **kwargs)

    def submit_with(
        self, options: dict[str, Any], keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        return self.dispatcher.options(**options).submit_multi(keys, fn, *args)

    def stats(self) -> DispatcherStats:
        return self.dispatcher.stats()

    def resume(self, key: Hashable) -> bool:
        return self.dispatcher.resume(key)

    def pause(self, key: Hashable) -> bool:
        return self.dispatcher.pause(key)

    def cancel_pending(self, key: Hashable) -> int:
        return self.dispatcher.cancel_pending(key)

    def key_info(self, key: Hashable) -> KeyInfo:
        return self.dispatcher.key_info(key)

    def keys(self, limit: int | None = None) -> list[KeyInfo]:
        return self.dispatcher.keys(limit)

    def current_job(self) -> JobContext | None:
        return self.dispatcher.current_job()

    def halted_keys(self) -> frozenset[Hashable]:
        return self.dispatcher.halted_keys()

    def exclusive(
        self, keys: Iterable[Hashable], timeout: float | None = 30.0
    ) -> AbstractContextManager[None]:
        return self.dispatcher.exclusive(keys, timeout)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        self.dispatcher.shutdown(wait, cancel_pending=cancel_pending)

    def job(self, *steps: Step) -> Callable[..., Any]:
        def job(*args: Any, **kwargs: Any) -> Any:
            result = None
            for step in steps:
                if isinstance(step, _ThreadGate | _ThreadBarrier):
                    step.pass_()
                elif isinstance(step, int | float):
                    time.sleep(step)
                elif isinstance(step, Gate | Barrier):
                    raise TypeError("a gate or barrier of another runner")
                else:
                    result = step(*args, **kwargs)
            return result

        return job

    def _new_gate(self) -> Gate:
        return _ThreadGate()

    def barrier(self, parties: int) -> Barrier:
        return _ThreadBarrier(parties)

    def _close(self) -> None:
        close_and_check(self.dispatcher)

    def __repr__(self) -> str:
        return repr(self.dispatcher)


# -- the event loop ----------------------------------------------------------


class _AsyncGate(Gate):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._event = asyncio.Event()  # used on the loop's thread only

    def open(self) -> None:
        if not self._opened.is_set():
            self._opened.set()
            self._loop.call_soon_threadsafe(self._event.set)

    async def pass_(self) -> None:
        self.entered.set()
        await asyncio.wait_for(self._event.wait(), WAIT)


class _AsyncBarrier(Barrier):
    # Used on the loop's thread only: no lock.
    def __init__(self, parties: int) -> None:
        super().__init__(parties)
        self._waiting = 0
        self._met = asyncio.Event()

    async def pass_(self) -> None:
        met = self._met
        self._waiting += 1
        if self._waiting == self.parties:
            self._waiting = 0
            self._met = asyncio.Event()
            met.set()
        else:
            await asyncio.wait_for(met.wait(), WAIT)


class _Mirror(concurrent.futures.Future[Any]):
    """A job's asyncio future (or a caller task), seen from other threads.

    It changes on the loop's thread only: a done callback copies the
    native outcome, and ``cancel()`` cancels the native future there. A
    cancelled job future is cancelled at once; a cancelled task only once
    it has unwound.
    """

    def __init__(self, runner: AsyncioRunner) -> None:
        super().__init__()
        self._runner = runner
        self.native: asyncio.Future[Any] | None = None

    def follow(self, native: asyncio.Future[Any]) -> None:
        self.native = native
        native.add_done_callback(self._copy)

    def _copy(self, native: asyncio.Future[Any]) -> None:
        if self.done():
            return  # cancelled by cancel() already
        if native.cancelled():
            concurrent.futures.Future.cancel(self)
            # What wakes concurrent.futures.wait() and as_completed().
            self.set_running_or_notify_cancel()
        elif (error := native.exception()) is not None:
            self.set_exception(error)
        else:
            self.set_result(native.result())

    def cancel(self) -> bool:
        native = self.native
        assert native is not None

        def cancel_native() -> bool:
            if not native.cancel():
                return False
            if native.done():
                self._copy(native)
            return True

        return self._runner.call(cancel_native)


class AsyncioRunner(Runner):
    """An ``AsyncKeyedDispatcher`` on an event loop running in a thread of its own.

    Closing the runner fails the test if a task outlived ``aclose()`` or
    the loop's exception handler was called (for instance "exception was
    never retrieved"). With ``debug`` (the default; the property tests turn
    it off for speed) the loop runs in debug mode, where asyncio raises on
    calls from the wrong thread, and closing collects garbage first, so
    that a future lost in a reference cycle is reported too.
    """

    kind = "asyncio"
    cancels_running = True

    def __init__(self, max_workers: int, *, debug: bool = True, **settings: Any) -> None:
        super().__init__()
        self.dispatcher = AsyncKeyedDispatcher(max_workers, config=DispatcherConfig(), **settings)
        self._reported: list[dict[str, Any]] = []
        self._closing: list[asyncio.Task[None]] = []
        # The last snapshot, taken by close(); stats() returns it afterwards.
        self._final: DispatcherStats | None = None
        loop = self._loop = asyncio.new_event_loop()
        loop.set_debug(debug)
        self._debug = debug
        loop.set_exception_handler(lambda _, context: self._reported.append(context))
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"kd-test-loop-{next(_loop_names)}", daemon=True
        )
        self._thread.start()
        self._await(self.dispatcher.__aenter__())  # binds the dispatcher to the loop

    def _await(self, coro: Coroutine[Any, Any, _T]) -> _T:
        # Run ``coro`` on the loop, wait for its outcome in this thread.
        if self._final is not None:
            coro.close()
            raise RuntimeError("the runner is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(_CALL_WAIT)
        except BaseException:
            if future.done():
                raise  # what the coroutine raised (SubmitTimeout is a TimeoutError too)
            future.cancel()
            pytest.fail(f"the event loop did not answer within {_CALL_WAIT}s")

    def call(self, fn: Callable[..., _T], /, *args: Any) -> _T:
        """``fn(*args)``, called on the loop's thread."""

        async def call() -> _T:
            return fn(*args)

        return self._await(call())

    def _native(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        # A plain function runs as a one-step coroutine job. Anything not
        # callable goes as is, for the dispatcher to refuse.
        if callable(fn) and not inspect.iscoroutinefunction(fn):
            return self.job(fn)
        return fn

    def _submit(
        self,
        submit: Callable[..., Awaitable[asyncio.Future[Any]]],
        keys: Any,
        fn: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        mirror = _Mirror(self)
        job = self._native(fn)

        async def admit() -> None:
            mirror.follow(await submit(keys, job, *args, **kwargs))

        self._await(admit())
        return mirror

    def submit(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self._submit(self.dispatcher.submit, key, fn, args, kwargs)

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self._submit(self.dispatcher.submit_multi, keys, fn, args, kwargs)

    def run_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., Any], /
    ) -> concurrent.futures.Future[Any]:
        """``AsyncKeyedDispatcher.run_multi`` in a caller task of its own.

        Returns once the job is admitted; the future mirrors the caller
        task, and cancelling it cancels that task.
        """
        mirror = _Mirror(self)
        job = self._native(fn)

        async def start() -> None:
            admitted = asyncio.Event()

            async def caller() -> Any:
                admitted.set()
                return await self.dispatcher.run_multi(keys, job)  # admitted in this step

            mirror.follow(asyncio.ensure_future(caller()))
            await admitted.wait()

        self._await(start())
        return mirror

    def submit_with(
        self, options: dict[str, Any], keys: Iterable[Hashable], fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        return self._submit(self.dispatcher.options(**options).submit_multi, keys, fn, args, {})

    def stats(self) -> DispatcherStats:
        if self._final is not None:
            return self._final
        return self.call(self.dispatcher.stats)

    def resume(self, key: Hashable) -> bool:
        return self.call(self.dispatcher.resume, key)

    def pause(self, key: Hashable) -> bool:
        return self.call(self.dispatcher.pause, key)

    def cancel_pending(self, key: Hashable) -> int:
        return self.call(self.dispatcher.cancel_pending, key)

    def key_info(self, key: Hashable) -> KeyInfo:
        return self.call(self.dispatcher.key_info, key)

    def keys(self, limit: int | None = None) -> list[KeyInfo]:
        return self.call(self.dispatcher.keys, limit)

    def current_job(self) -> JobContext | None:
        # Jobs run on the loop's thread: called from a job, this is that thread.
        return self.dispatcher.current_job()

    def halted_keys(self) -> frozenset[Hashable]:
        return self.call(self.dispatcher.halted_keys)

    @contextmanager
    def exclusive(self, keys: Iterable[Hashable], timeout: float | None = 30.0) -> Iterator[None]:
        # The block is held by a task on the loop while the calling thread
        # runs the body; the body's exception is raised in that task, so the
        # dispatcher sees the block fail.
        entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        leave: concurrent.futures.Future[Exception | None] = concurrent.futures.Future()

        async def hold() -> None:
            async with self.dispatcher.exclusive(keys, timeout):
                entered.set_result(None)
                error = await asyncio.wrap_future(leave)
                if error is not None:
                    raise error

        held = asyncio.run_coroutine_threadsafe(hold(), self._loop)
        concurrent.futures.wait([entered, held], _CALL_WAIT, concurrent.futures.FIRST_COMPLETED)
        if not entered.done():
            if held.done():
                held.result()  # raises why the block did not get in
            pytest.fail(f"exclusive({keys}) neither entered nor failed within {_CALL_WAIT}s")
        try:
            yield
        except Exception as exc:
            leave.set_result(exc)
            concurrent.futures.wait([held], _CALL_WAIT)
            raise
        except BaseException:
            leave.set_result(None)  # pytest's outcomes: not the block's business
            held.result(_CALL_WAIT)
            raise
        leave.set_result(None)
        held.result(_CALL_WAIT)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        dispatcher = self.dispatcher
        if wait:
            self._await(dispatcher.aclose(cancel_pending))
            return

        async def begin() -> None:
            self._closing.append(asyncio.ensure_future(dispatcher.aclose(cancel_pending)))
            await asyncio.sleep(0)  # aclose's first step closes and cancels

        self._await(begin())

    def job(self, *steps: Step) -> Callable[..., Any]:
        async def job(*args: Any, **kwargs: Any) -> Any:
            result = None
            for step in steps:
                if isinstance(step, _AsyncGate | _AsyncBarrier):
                    await step.pass_()
                elif isinstance(step, int | float):
                    await asyncio.sleep(step)
                elif isinstance(step, Gate | Barrier):
                    raise TypeError("a gate or barrier of another runner")
                else:
                    result = step(*args, **kwargs)
            return result

        return job

    def _new_gate(self) -> Gate:
        return _AsyncGate(self._loop)

    def barrier(self, parties: int) -> Barrier:
        return _AsyncBarrier(parties)

    def _close(self) -> None:
        async def drain() -> DispatcherStats:
            await self.dispatcher.aclose()
            for closing in self._closing:
                await closing
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not others, f"tasks outlived aclose(): {others}"
            await self._loop.shutdown_asyncgens()
            if self._debug:
                # Finds futures in reference cycles whose exception nobody
                # retrieved; a full collection costs tens of ms, too much
                # for every example of a property test.
                gc.collect()
                await asyncio.sleep(0)  # let __del__ reports reach the handler
            return self.dispatcher.stats()

        try:
            stats = self._await(drain())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the event loop did not stop"
        self._loop.close()
        assert not self._reported, f"the loop's exception handler was called: {self._reported}"
        self._final = stats
        assert stats.pending == stats.running == stats.workers == 0, stats

    def __repr__(self) -> str:
        return self.call(repr, self.dispatcher)


def declare_cancelled_runs(recorder: OrderRecorder, runner: Runner) -> None:
    """Tell ``recorder`` which cancelled jobs ran: those whose cancel stopped them running.

    For jobs submitted with ``recorder.submit(runner, ...)``; call it once
    they are done. The recorder takes a cancelled concurrent future for a
    job that never ran, which is all a thread runner's cancel can do; the
    asyncio runner also cancels running jobs, which then ran once.
    """
    if not runner.cancels_running:
        return
    for record in recorder.jobs:
        if record.future is not None and record.future.cancelled() and record.starts:
            record.expect_run = True


def open_runner(kind: str, max_workers: int = 4, *, debug: bool = True, **settings: Any) -> Runner:
    """A runner of ``kind`` ("thread" or "asyncio"); close it with :meth:`Runner.close`.

    ``settings`` are the dispatcher's keyword arguments, with environment-free
    defaults; ``max_workers`` is ``max_concurrency`` for asyncio.
    """
    if kind == "thread":
        return ThreadRunner(max_workers, **settings)
    if kind == "asyncio":
        return AsyncioRunner(max_workers, debug=debug, **settings)
    raise ValueError(f"unknown runner {kind!r}")


@contextmanager
def running(kind: str, max_workers: int = 4, **settings: Any) -> Iterator[Runner]:
    """:func:`open_runner`, closed and checked on exit (for Hypothesis tests,
    which cannot use function-scoped fixtures)."""
    runner = open_runner(kind, max_workers, **settings)
    try:
        yield runner
    finally:
        runner.close()
