"""Dispatchers that record their jobs in an OrderRecorder, and the checks of their end.

The pytest plugin (``pytest_plugin.py``) hands these out as fixtures and
turns the problems found here into test failures; this module does not
import pytest. It imports asyncio (through ``testing``), so the plugin
imports it only when a fixture is used.

The recorder sees the jobs of ``submit`` and ``submit_multi`` (and so of an
``executor(key)`` view): for them the recorded admission order is the true
one. Other ways in (``submit_async``, ``run``, ``exclusive``) are not
recorded, as their admission cannot be stamped from outside without a lock
held across an await.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from ._asyncio import AsyncKeyedDispatcher
from ._runner import many_keys, one_key
from ._simulator import SimulatedDispatcher
from ._thread import KeyedDispatcher
from .testing import OrderRecorder

__all__ = [
    "CheckedAsyncDispatcher",
    "CheckedDispatcher",
    "CheckedSimulatedDispatcher",
    "left_behind",
    "not_drained",
]

_T = TypeVar("_T")


def _recorded_submit(
    recorder: OrderRecorder,
    submit_multi: Callable[..., Any],
    keys: tuple[Hashable, ...],
    fn: Callable[..., Any],
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    admission: AbstractContextManager[object],
) -> Any:
    # OrderRecorder.submit with keyword arguments, for an overriding submit
    # (which passes the overridden one).
    wrapped = recorder.wrap(keys, fn)
    with admission:
        try:
            future = submit_multi(keys, wrapped, *args, **kwargs)
        except BaseException:
            recorder.expect(wrapped, ran=False)
            raise
        recorder.admitted(wrapped)
    wrapped.recorded.future = future  # type: ignore[attr-defined]
    return future


class CheckedDispatcher(KeyedDispatcher):
    """A KeyedDispatcher whose ``submit`` and ``submit_multi`` go through ``recorder``.

    Submits hold the recorder's admission lock, so that the recorded order
    is the true one: a submit that waits for room holds up submits from
    other threads (jobs included) until it is admitted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = OrderRecorder()

    def submit(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Any:
        keys = one_key(key, fn, "fn")
        lock = self.recorder.admission_lock()
        return _recorded_submit(
            self.recorder, super().submit_multi, keys, fn, args=args, kwargs=kwargs, admission=lock
        )

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> Any:
        normal = many_keys(keys, fn, "fn")
        lock = self.recorder.admission_lock()
        return _recorded_submit(
            self.recorder, super().submit_multi, normal, fn, args=args, kwargs=kwargs, admission=lock
        )


class CheckedSimulatedDispatcher(SimulatedDispatcher):
    """A SimulatedDispatcher whose ``submit`` and ``submit_multi`` go through ``recorder``.

    One thread admits every job, in order, so no lock is needed (and a
    submit that waits for room runs jobs that may submit in turn).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = OrderRecorder()

    def submit(self, key: Hashable, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Any:
        keys = one_key(key, fn, "fn")
        return _recorded_submit(
            self.recorder, super().submit_multi, keys, fn, args=args, kwargs=kwargs, admission=nullcontext()
        )

    def submit_multi(
        self, keys: Iterable[Hashable], fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> Any:
        normal = many_keys(keys, fn, "fn")
        return _recorded_submit(
            self.recorder, super().submit_multi, normal, fn, args=args, kwargs=kwargs, admission=nullcontext()
        )


class CheckedAsyncDispatcher(AsyncKeyedDispatcher):
    """An AsyncKeyedDispatcher whose ``submit`` and ``submit_multi`` go through ``recorder``.

    Admission happens in the submitting task, and nothing runs between its
    end and the return to the caller, so the admission is recorded right
    after the await, without a lock.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = OrderRecorder()

    async def submit(
        self, key: Hashable, coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Any:
        return await self._recorded(one_key(key, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    async def submit_multi(
        self, keys: Iterable[Hashable], coro_fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any
    ) -> Any:
        return await self._recorded(many_keys(keys, coro_fn, "coro_fn"), coro_fn, args, kwargs)

    async def _recorded(
        self,
        keys: tuple[Hashable, ...],
        coro_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        recorder = self.recorder
        wrapped = recorder.wrap(keys, coro_fn)
        try:
            future = await super().submit_multi(keys, wrapped, *args, **kwargs)
        except BaseException:
            recorder.expect(wrapped, ran=False)
            raise
        recorder.admitted(wrapped)
        wrapped.recorded.future = future  # type: ignore[attr-defined]
        return future


def left_behind(recorder: OrderRecorder) -> str:
    """The jobs of ``recorder`` that started and did not end, as text ("" if none)."""
    running = [job for job in recorder.jobs if len(job.starts) > len(job.ends)]
    return ", ".join(f"job {job.job_id} on keys {job.keys!r}" for job in running)


def not_drained(dispatcher: KeyedDispatcher, timeout: float) -> str | None:
    """Shut ``dispatcher`` down and wait up to ``timeout`` s for its jobs; None if they all ended.

    Otherwise the dispatcher is left draining (it admits nothing more) and
    the return value says what was left. The wait runs in a daemon thread,
    so that a job that never ends cannot hang the caller.
    """
    stopper = threading.Thread(target=dispatcher.shutdown, name="keyed-dispatch-fixture-drain", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if not stopper.is_alive():
        return None
    stats = dispatcher.stats()
    return f"{stats.running} running and {stats.pending} queued"
