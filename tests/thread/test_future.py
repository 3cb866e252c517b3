"""KeyedFuture's light start: the same fields as Future, and every way to wait still works."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait
from concurrent.futures import TimeoutError as FuturesTimeoutError

import pytest

from keyed_dispatch import KeyedDispatcher, KeyedFuture
from keyed_dispatch._future import FIELDS, LIGHT, FutureCondition

DEADLINE = 10.0


def test_futures_on_every_supported_python_start_light() -> None:
    # Python 3.10 to 3.13 set these fields; a version that sets others makes
    # LIGHT False and KeyedFuture falls back on Future.__init__.
    assert tuple(vars(Future())) == FIELDS
    assert LIGHT
    future: KeyedFuture[int] = KeyedFuture()
    assert tuple(vars(future)) == FIELDS
    assert isinstance(future._condition, FutureCondition)
    assert not future.done()
    assert not future.running()


def test_a_thread_blocked_on_result_is_woken_by_the_job() -> None:
    gate = threading.Event()
    with KeyedDispatcher(max_workers=2) as d:
        future = d.submit("k", gate.wait)
        got: list[object] = []
        waiting = threading.Thread(target=lambda: got.append(future.result(timeout=DEADLINE)))
        waiting.start()
        # The waiter is blocked on the condition once it was made.
        with pytest.raises(FuturesTimeoutError):
            future.result(timeout=0.01)
        gate.set()
        waiting.join(DEADLINE)
        assert got == [True]


def test_wait_and_as_completed_see_keyed_futures_finish() -> None:
    gates = [threading.Event() for _ in range(3)]
    with KeyedDispatcher(max_workers=3) as d:
        futures = [d.submit(n, gate.wait) for n, gate in enumerate(gates)]
        done, pending = wait(futures, timeout=0.01)
        assert not done
        assert len(pending) == 3
        gates[1].set()
        done, pending = wait(futures, timeout=DEADLINE, return_when=FIRST_COMPLETED)
        assert done == {futures[1]}
        gates[0].set()
        gates[2].set()
        assert set(as_completed(futures, timeout=DEADLINE)) == set(futures)


def test_a_keyed_future_wrapped_for_asyncio_resolves() -> None:
    with KeyedDispatcher(max_workers=1) as d:

        async def main() -> int:
            return await asyncio.wrap_future(d.submit("k", lambda: 7))

        assert asyncio.run(main()) == 7


def test_a_callback_added_before_and_after_the_result_runs_once_each() -> None:
    gate = threading.Event()
    calls: list[str] = []
    with KeyedDispatcher(max_workers=1) as d:
        future = d.submit("k", gate.wait)
        future.add_done_callback(lambda f: calls.append("before"))
        gate.set()
        future.result(timeout=DEADLINE)
        future.add_done_callback(lambda f: calls.append("after"))
    assert calls == ["before", "after"]


def test_the_condition_refuses_a_wait_without_its_lock() -> None:
    condition = FutureCondition()
    with pytest.raises(RuntimeError):
        condition.wait(0)
    with condition:
        assert condition.wait(0) is False  # timed out, no notify
        condition.notify_all()
        condition.notify()
    # notify before any wait is a no-op, not an error.
    fresh = FutureCondition()
    with fresh:
        fresh.notify_all()
    assert fresh.acquire(False)
    fresh.release()
