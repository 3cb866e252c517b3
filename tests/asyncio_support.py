"""Helpers for the asyncio tests: run a test body on a fresh loop, and check
that it left no task, no thread and no unretrieved exception behind."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

_T = TypeVar("_T")

# Generous: only a broken dispatcher gets near it, and a failing test must
# still end long before pytest-timeout's 60 s.
WAIT = 10.0


def run(body: Callable[[], Coroutine[Any, Any, _T]], *, debug: bool = True) -> _T:
    """``asyncio.run(body())``, then check what the test left behind.

    Fails the test if, when ``body`` returns, another task is still alive,
    if the loop's exception handler was called (for instance "Task
    exception was never retrieved", found by a ``gc.collect()`` while the
    loop still runs), or if a thread started during the test is still
    alive after the loop closed. Debug mode also makes asyncio raise on
    calls from the wrong thread.
    """
    threads_before = set(threading.enumerate())
    reported: list[dict[str, Any]] = []

    async def main() -> _T:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        result = await body()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, f"the test left tasks behind: {others}"
        gc.collect()
        await asyncio.sleep(0)  # let __del__ reports reach the handler
        return result

    result = asyncio.run(main(), debug=debug)
    assert not reported, f"the loop's exception handler was called: {reported}"
    # asyncio.run joined its default executor; any other thread of ours
    # must have ended with the loop.
    deadline = time.monotonic() + WAIT
    while True:
        left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not left:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the test left threads behind: {left}")
        time.sleep(0.001)
    return result


async def within(awaitable: Awaitable[_T], timeout: float = WAIT) -> _T:
    """Await ``awaitable``, failing the test instead of hanging."""
    return await asyncio.wait_for(awaitable, timeout)


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Yield to the loop until ``predicate()`` holds; fail after ``timeout``.

    For state that no event announces (``stats()`` counters, a thread's
    progress); each round lets every ready callback of the loop run.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0)


class Gate:
    """An asyncio.Event a job waits on, plus an Event it sets on entry."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.exited = asyncio.Event()

    async def job(self, result: Any = None) -> Any:
        self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.exited.set()
        return result
