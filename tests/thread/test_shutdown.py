"""The thread runner's workers and shutdown: lazy and idle-exiting workers, threads
joined, clean interpreter exit (the shared semantics are in tests/contract)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

import keyed_dispatch._thread as dispatcher_module
from keyed_dispatch import DispatcherConfig, KeyedDispatcher
from tests.helpers import WAIT, Gates, MakeDispatcher, settle, threads_named, wait_until


def test_context_manager_shuts_down(gates: Gates) -> None:
    with KeyedDispatcher(2, config=DispatcherConfig(), name="kd-ctx") as d:
        future = d.submit("k", lambda: 7)
        assert "open" in repr(d)
    assert future.result(timeout=0) == 7
    assert d.stats().closed
    assert threads_named("kd-ctx_") == []


def test_shutdown_wait_inside_a_job_raises_but_without_wait_works(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)

    def stop(wait: bool) -> None:
        d.shutdown(wait=wait)

    assert isinstance(d.submit("k", stop, True).exception(timeout=WAIT), RuntimeError)
    assert d.submit("k", stop, False).exception(timeout=WAIT) is None
    assert d.stats().closed


def test_workers_start_lazily(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(8, name="kd-lazy")
    assert d.stats().workers == 0
    assert threads_named("kd-lazy") == []
    for _ in range(20):
        d.submit("k", lambda: None).result(timeout=WAIT)
    # One key, one job at a time: one worker is enough, so one is started.
    assert d.stats().workers == 1


def test_idle_workers_exit_after_idle_timeout(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(config=DispatcherConfig(max_workers=3, idle_timeout=0.02))
    barrier = threading.Barrier(3)
    futures = [d.submit(key, barrier.wait, WAIT) for key in "abc"]
    for future in futures:
        future.result(timeout=WAIT)
    wait_until(lambda: d.stats().workers == 0, what="idle workers to exit")
    assert d.stats().idle_workers == 0
    # New work starts new workers.
    assert d.submit("a", lambda: "again").result(timeout=WAIT) == "again"


def test_a_job_handed_over_as_the_idle_wait_times_out_still_runs(make_dispatcher: MakeDispatcher) -> None:
    # Many short idle periods: hand-offs race with idle timeouts; no job
    # may be lost and the worker count must stay consistent.
    d = make_dispatcher(config=DispatcherConfig(max_workers=2, idle_timeout=0.001))
    for i in range(200):
        assert d.submit(f"k{i % 2}", lambda i=i: i).result(timeout=WAIT) == i
    wait_until(lambda: d.stats().workers == 0, what="idle workers to exit")


def test_failure_to_start_a_thread_fails_the_job(
    make_dispatcher: MakeDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    class RefusedThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    fake_threading = SimpleNamespace(**{**vars(threading), "Thread": RefusedThread})
    d = make_dispatcher(2)
    monkeypatch.setattr(dispatcher_module, "threading", fake_threading)
    future = d.submit("k", lambda: None)
    error = future.exception(timeout=WAIT)
    assert isinstance(error, RuntimeError)
    assert "can't start new thread" in str(error)
    settle(d)
    stats = d.stats()
    assert (stats.workers, stats.failed, stats.active_shards) == (0, 1, 0)
    monkeypatch.undo()
    assert d.submit("k", lambda: "ok").result(timeout=WAIT) == "ok"


_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from keyed_dispatch import KeyedDispatcher, DispatcherConfig

    d = KeyedDispatcher(4, config=DispatcherConfig(idle_timeout=300))
    ran = []
    gate = threading.Event()
    d.submit("k", gate.wait, 30)
    d.submit("k", ran.append, "queued job")
    d.submit("other", ran.append, "other job").result(timeout=30)
    gate.set()
    # No shutdown: the exit hook must let the queued job run, then let the
    # idle workers go at once instead of after idle_timeout.
    import atexit
    atexit.register(lambda: print(sorted(ran), flush=True))
    """
)


@pytest.mark.slow
def test_interpreter_exits_cleanly_without_shutdown() -> None:
    started = time.monotonic()
    proc = subprocess.run(  # noqa: S603 - our own interpreter on a fixed script
        [sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['other job', 'queued job']"
    assert proc.stderr == ""
    # idle_timeout is 300 s: finishing in under a minute means the workers
    # did not idle it out.
    assert elapsed < 60


def test_shutdown_wakes_when_a_cancelled_block_is_the_last_job(make_dispatcher: MakeDispatcher) -> None:
    # The race: a block's exclusive() wait times out and it cancels its
    # future, but before its _on_cancel gets the lock, the holder of the key
    # exits and the dispatcher grants the (now cancelled) block, retiring it
    # as the last job. shutdown(wait=True), already waiting, must wake. The
    # window is reproduced by cancelling the block's future directly.
    d = make_dispatcher(2)
    waiter: threading.Thread | None = None
    with d.exclusive(["k"]):
        block: Future[None] = d._submit(("k",), None, (), {})
        Future.cancel(block)
        waiter = threading.Thread(target=d.shutdown)
        waiter.start()
        wait_until(lambda: d.stats().closed, what="shutdown to begin")
    waiter.join(timeout=WAIT)
    assert not waiter.is_alive(), "shutdown(wait=True) missed the drain"
    assert d.stats().cancelled == 1


@pytest.mark.parametrize("with_timer", [False, True])
def test_shutdown_joins_threads_that_already_left_the_pool(
    make_dispatcher: MakeDispatcher, gates: Gates, monkeypatch: pytest.MonkeyPatch, with_timer: bool
) -> None:
    # A worker (or the deadline timer) that has taken itself off the books
    # is still a live thread until its function returns. shutdown(wait=True)
    # must join it too. The hold below keeps such threads alive just after
    # they leave the dispatcher's code.
    d = make_dispatcher(2, start_timeout=WAIT if with_timer else None)
    release = gates.new()
    left = threading.Semaphore(0)

    def held(original: Any) -> Any:
        def run(*args: Any) -> None:
            original(*args)
            left.release()
            release.wait(WAIT)

        return run

    monkeypatch.setattr(d, "_work", held(d._work))
    monkeypatch.setattr(d, "_expire_loop", held(d._expire_loop))
    job_gate = gates.new()
    d.submit("k", job_gate.wait)
    d.shutdown(wait=False)
    # The drain lets the worker and the timer end on their own, before
    # anyone waits for them.
    job_gate.set()
    for _ in range(2 if with_timer else 1):
        assert left.acquire(timeout=WAIT)
    stopper = threading.Thread(target=d.shutdown)
    stopper.start()
    # The held threads are alive, so shutdown must still be joining them.
    stopper.join(timeout=0.05)
    assert stopper.is_alive(), "shutdown(wait=True) returned while a thread it started was alive"
    release.set()
    stopper.join(timeout=WAIT)
    assert not stopper.is_alive()
