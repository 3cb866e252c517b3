"""Point 10: executor(key) is a concurrent.futures.Executor view of one key."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

import pytest

from keyed_dispatch import DispatcherClosed, KeyExecutor
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_submit_runs_on_the_key_in_order_with_the_dispatcher(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(4)
    ex = d.executor("k")
    assert isinstance(ex, Executor)
    assert isinstance(ex, KeyExecutor)
    assert ex.key == "k"
    gate = gates.new()
    order: list[str] = []

    def earlier() -> None:
        gate.wait(WAIT)
        order.append("dispatcher")

    blocker = d.submit("k", earlier)
    through_view = ex.submit(order.append, "view")
    assert not through_view.done()
    gate.set()
    through_view.result(timeout=WAIT)
    blocker.result(timeout=WAIT)
    assert order == ["dispatcher", "view"]


def test_map_keeps_executor_semantics(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(4)
    ex = d.executor("k")
    assert list(ex.map(pow, [2, 3, 4], [2, 2, 2], timeout=WAIT)) == [4, 9, 16]
    assert list(ex.map(str.upper, [])) == []
    # An exception surfaces when its result is reached.
    results = ex.map(lambda x: 1 // x, [1, 0, 2])
    assert next(results) == 1
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    d.submit("k", gate.wait)
    results = d.executor("k").map(abs, [-1, -2], timeout=0.01)
    with pytest.raises(FuturesTimeoutError):
        next(results)
    gate.set()


def test_shutdown_wait_waits_for_the_views_jobs_only(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    ex = d.executor("k")
    view_job = ex.submit(gate.wait)
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True})
    stopper.start()
    stopper.join(timeout=0.05)
    assert stopper.is_alive()
    with pytest.raises(DispatcherClosed, match="executor view of key k"):
        ex.submit(print)
    # The dispatcher is still open, also on the view's key.
    queued = d.submit("k", lambda: "dispatcher still open")
    gate.set()
    stopper.join(timeout=WAIT)
    assert not stopper.is_alive()
    assert view_job.result(timeout=0) is True
    assert queued.result(timeout=WAIT) == "dispatcher still open"
    assert not d.stats().closed


def test_shutdown_without_wait_and_cancel_futures(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    ex = d.executor("k")
    running = ex.submit(gate.wait)
    wait_until(lambda: d.stats().running == 1, what="the view's first job to start")
    queued = ex.submit(print, "never")
    ex.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    assert not running.done()
    gate.set()
    assert running.result(timeout=WAIT) is True
    ex.shutdown(wait=True)  # waits for nothing left; a cancelled future is skipped


def test_context_manager_closes_the_view(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    with d.executor("k") as ex:
        futures = [ex.submit(lambda i=i: i * 2) for i in range(10)]
    assert [f.result(timeout=0) for f in futures] == [i * 2 for i in range(10)]
    with pytest.raises(DispatcherClosed):
        ex.submit(print)


def test_usable_with_run_in_executor(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    ex = d.executor(("strategy", 1))
    order: list[int] = []

    def record(i: int) -> int:
        order.append(i)
        return i

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, record, i) for i in range(20)))

    assert asyncio.run(main()) == list(range(20))
    assert order == list(range(20))
    ex.shutdown()


def test_closed_dispatcher_refuses_view_submits(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    ex = d.executor("k")
    d.shutdown()
    with pytest.raises(DispatcherClosed):
        ex.submit(print)


def test_shutdown_wait_with_cancel_futures(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    ex = d.executor("k")
    running = ex.submit(gate.wait)
    queued = [ex.submit(print, "never") for _ in range(3)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    wait_until(lambda: all(f.cancelled() for f in queued), what="the queued jobs to be cancelled")
    # It still waits for the running one.
    stopper.join(timeout=0.05)
    assert stopper.is_alive()
    gate.set()
    stopper.join(timeout=WAIT)
    assert running.result(timeout=0) is True


@pytest.mark.parametrize("key", [["a"], {"a": 1}])
def test_an_unhashable_key_is_refused_at_the_call(make_dispatcher: MakeDispatcher, key: Any) -> None:
    d = make_dispatcher(1)
    with pytest.raises(TypeError, match=f"unhashable {type(key).__name__}"):
        d.executor(key)
