"""Point 1: jobs sharing a key never overlap and start in admission order."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

from keyed_dispatch.testing import OrderRecorder, failing
from tests.contract.conftest import MakeRunner
from tests.contract.runners import Runner
from tests.helpers import WAIT, wait_until


def test_one_key_runs_in_program_order(make_runner: MakeRunner) -> None:
    r = make_runner(8)
    out: list[int] = []
    futures = [r.submit("k", out.append, i) for i in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == list(range(300))


def test_interleaved_keys_keep_per_key_order_and_never_overlap(runner: Runner) -> None:
    rec = OrderRecorder()
    # Each job lets the others run between its start and its end.
    futures = [rec.submit(runner, [f"k{i % 5}"], runner.job(0)) for i in range(200)]
    for future in futures:
        future.result(timeout=WAIT)
    rec.check()
    assert len(rec.ran()) == 200


def test_admission_order_from_many_submitting_threads(runner: Runner) -> None:
    # Admission order is the order in which submit calls return; the
    # recorder's admission lock makes the recorded order that order.
    rec = OrderRecorder()
    start = threading.Barrier(4)
    futures: list[Future[Any]] = []
    lock = threading.Lock()
    job = runner.job(0)

    def submitter(n: int) -> None:
        start.wait(timeout=WAIT)
        for i in range(50):
            future = rec.submit(runner, ["shared", f"own{n}"] if i % 7 == 0 else ["shared"], job)
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    for future in futures:
        future.result(timeout=WAIT)
    assert len(futures) == 200
    rec.check()


def test_later_job_waits_while_earlier_job_of_its_key_runs(runner: Runner) -> None:
    gate = runner.gate()
    started = threading.Event()
    first = runner.submit("k", runner.job(gate, lambda: "first"))
    second = runner.submit("k", started.set)
    other = runner.submit("other", lambda: "free")
    # A free key runs at once; the same key waits for the running job.
    assert other.result(timeout=WAIT) == "free"
    assert gate.entered.wait(WAIT)
    wait_until(lambda: runner.stats().running == 1, what="only the first job running")
    stats = runner.stats()
    assert (stats.running, stats.pending) == (1, 1)
    assert not started.is_set()
    assert not second.done()
    gate.open()
    second.result(timeout=WAIT)
    assert first.result(timeout=WAIT) == "first"


@pytest.mark.parametrize("finish", ["fails", "cancelled"])
def test_key_moves_on_after_each_kind_of_finish(make_runner: MakeRunner, finish: str) -> None:
    # "Finished" also covers failed and cancelled jobs (timed out before
    # start: see test_start_timeout.py).
    r = make_runner(2)
    gate = r.gate()
    rec = OrderRecorder()
    blocker = rec.submit(r, ["k"], r.job(gate, lambda: "blocker"))
    middle = rec.submit(r, ["k"], failing() if finish == "fails" else r.job())
    last = rec.submit(r, ["k"], r.job())
    if finish == "cancelled":
        assert middle.cancel()
    gate.open()
    last.result(timeout=WAIT)
    assert blocker.result(timeout=WAIT) == "blocker"
    if finish == "fails":
        assert isinstance(middle.exception(timeout=WAIT), ValueError)
    rec.check()


def test_jobs_of_a_key_are_serialized_under_load(make_runner: MakeRunner) -> None:
    # A direct check of exclusion, independent of the recorder.
    r = make_runner(8)
    active: dict[str, int] = {}
    worst: dict[str, int] = {}
    lock = threading.Lock()

    def enter(key: str) -> None:
        with lock:
            active[key] = active.get(key, 0) + 1
            worst[key] = max(worst.get(key, 0), active[key])

    def leave(key: str) -> None:
        with lock:
            active[key] -= 1

    # Between enter and leave the job lets others run, so that same-key
    # jobs would overlap if allowed to.
    job = r.job(enter, 0, leave)
    futures = [r.submit(f"k{i % 3}", job, f"k{i % 3}") for i in range(300)]
    for future in futures:
        future.result(timeout=WAIT)
    assert worst == {"k0": 1, "k1": 1, "k2": 1}
