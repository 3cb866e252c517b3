"""Helpers shared by the tests: polling with a deadline, gates, checked dispatchers."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import pytest

from keyed_dispatch import DispatcherConfig, DispatcherStats, KeyedDispatcher

_names = itertools.count(1)

# Generous: only a broken dispatcher gets near it, and a failing test must
# still end long before pytest-timeout's 60 s.
WAIT = 10.0


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds.

    Polling with a deadline is how tests synchronize with state they cannot
    wait on directly (``stats()``, thread liveness); the short sleep only
    paces the poll.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


class HasStats(Protocol):
    def stats(self) -> DispatcherStats: ...


def settle(dispatcher: HasStats) -> None:
    """Wait until no job of ``dispatcher`` is pending or running.

    A job's future is resolved a moment before the job retires (its key
    moves on, its outcome is counted), so a test reads counts only after this.
    """
    wait_until(lambda: (s := dispatcher.stats()).pending == s.running == 0, what="the dispatcher to settle")


def assert_consistent(stats: DispatcherStats) -> None:
    """The accounting identities that hold in every snapshot."""
    finished = stats.completed + stats.failed + stats.cancelled + stats.timed_out
    assert stats.pending + stats.running + finished == stats.submitted, stats
    assert 0 <= stats.idle_workers <= stats.workers <= stats.max_workers, stats
    assert stats.active_shards <= stats.max_shards, stats
    assert stats.max_wait_s >= 0, stats


def threads_named(prefix: str) -> list[threading.Thread]:
    """The live threads whose name starts with ``prefix``."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


class Gates:
    """Events that hold jobs; every gate is opened at teardown.

    A test that fails while a job waits on a gate must not leave the
    dispatcher's shutdown waiting for ever.
    """

    def __init__(self) -> None:
        self._events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def open_all(self) -> None:
        for event in self._events:
            event.set()


MakeDispatcher = Callable[..., KeyedDispatcher]


def new_dispatcher(max_workers: int | None = 4, **kwargs: Any) -> KeyedDispatcher:
    """A dispatcher with a unique thread-name prefix and environment-free settings."""
    kwargs.setdefault("name", f"kd-test-{next(_names)}")
    kwargs.setdefault("config", DispatcherConfig())
    return KeyedDispatcher(max_workers, **kwargs)


def close_and_check(dispatcher: KeyedDispatcher) -> None:
    """Shut ``dispatcher`` down, waiting, and check that nothing of it is left."""
    # In a thread, so that a shutdown that never returns fails the test
    # instead of hanging the run (pytest-timeout cannot interrupt it twice).
    stopper = threading.Thread(target=dispatcher.shutdown, name="kd-test-shutdown", daemon=True)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "shutdown(wait=True) did not return"
    # shutdown(wait=True) joins every thread the dispatcher started.
    name = dispatcher._name
    assert threads_named(name + "_") == [], f"threads of {name} outlived shutdown(wait=True)"
    stats = dispatcher.stats()
    assert stats.pending == stats.running == stats.workers == 0, stats


@contextmanager
def checked_dispatcher(max_workers: int | None = 4, **kwargs: Any) -> Iterator[KeyedDispatcher]:
    """:func:`new_dispatcher`, closed and checked on exit (for Hypothesis tests,
    which cannot use function-scoped fixtures)."""
    dispatcher = new_dispatcher(max_workers, **kwargs)
    try:
        yield dispatcher
    finally:
        close_and_check(dispatcher)
