"""Point 1: jobs sharing a key never overlap and start in admission order."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

from keyed_dispatch.testing import OrderRecorder, failing
from tests.helpers import WAIT, Gates, MakeDispatcher, wait_until


def test_one_key_runs_in_program_order(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(8)
    out: list[int] = []
    futures = [d.submit("k", out.append, i) for i in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == list(range(300))


def test_interleaved_keys_keep_per_key_order_and_never_overlap(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(4)
    rec = OrderRecorder()
    futures = [rec.submit(d, [f"k{i % 5}"]) for i in range(200)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()
    assert len(rec.ran()) == 200


def test_admission_order_from_many_submitting_threads(make_dispatcher: MakeDispatcher) -> None:
    # Admission order is the order in which submit calls return; the
    # recorder's admission lock makes the recorded order that order.
    d = make_dispatcher(4)
    rec = OrderRecorder()
    start = threading.Barrier(4)
    futures: list[Future[Any]] = []
    lock = threading.Lock()

    def submitter(n: int) -> None:
        start.wait(timeout=WAIT)
        for i in range(50):
            future = rec.submit(d, ["shared", f"own{n}"] if i % 7 == 0 else ["shared"])
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()


def test_later_job_waits_while_earlier_job_of_its_key_runs(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(4)
    gate = gates.new()
    started = threading.Event()
    first = d.submit("k", gate.wait)
    second = d.submit("k", started.set)
    other = d.submit("other", lambda: "free")
    # A free key runs at once; the same key waits for the running job.
    assert other.result(timeout=WAIT) == "free"
    wait_until(lambda: d.stats().running == 1, what="first job running")
    stats = d.stats()
    assert (stats.running, stats.pending) == (1, 1)
    assert not started.is_set()
    assert not second.done()
    gate.set()
    second.result(timeout=WAIT)
    assert first.result(timeout=WAIT) is True


@pytest.mark.parametrize("finish", ["fails", "cancelled"])
def test_key_moves_on_after_each_kind_of_finish(
    make_dispatcher: MakeDispatcher, gates: Gates, finish: str
) -> None:
    # "Finished" also covers failed and cancelled jobs (timed out before
    # start: see test_start_timeout.py).
    d = make_dispatcher(2)
    gate = gates.new()
    rec = OrderRecorder()
    blocker = rec.submit(d, ["k"], gate.wait)
    middle = rec.submit(d, ["k"], failing() if finish == "fails" else None)
    last = rec.submit(d, ["k"])
    if finish == "cancelled":
        assert middle.cancel()
    gate.set()
    last.result(timeout=WAIT)
    assert blocker.result(timeout=WAIT) is True
    if finish == "fails":
        assert isinstance(middle.exception(timeout=WAIT), ValueError)
    rec.check()


def test_jobs_of_a_key_are_serialized_under_load(make_dispatcher: MakeDispatcher) -> None:
    # A direct check of exclusion, independent of the recorder.
    d = make_dispatcher(8)
    active: dict[str, int] = {}
    worst: dict[str, int] = {}
    lock = threading.Lock()

    def job(key: str) -> None:
        with lock:
            active[key] = active.get(key, 0) + 1
            worst[key] = max(worst.get(key, 0), active[key])
        # A little work, so that same-key jobs would overlap if allowed to.
        for _ in range(200):
            pass
        with lock:
            active[key] -= 1

    futures = [d.submit(f"k{i % 3}", job, f"k{i % 3}") for i in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    assert worst == {"k0": 1, "k1": 1, "k2": 1}
