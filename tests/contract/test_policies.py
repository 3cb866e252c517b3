"""Key policies on every runner: ordered retries, supersede, pause, cancel_pending, inspection."""

from __future__ import annotations

import concurrent.futures
import math
import threading
from typing import Any

import pytest

from keyed_dispatch import DeadLetter, KeyHalted, Retry, StartTimeout, Superseded
from tests.contract.conftest import MakeRunner
from tests.contract.runners import AsyncioRunner, Runner
from tests.helpers import WAIT, settle, wait_until

FAST = Retry(attempts=3, backoff=0.0, jitter=0.0)


class Flaky:
    """A job that fails its first ``failures`` attempts, recording each one."""

    def __init__(self, runner: Runner, name: str, log: list[tuple[str, int]], failures: int) -> None:
        self.runner = runner
        self.name = name
        self.log = log
        self.failures = failures
        self.ids: list[str] = []

    def __call__(self) -> str:
        context = self.runner.current_job()
        assert context is not None
        self.ids.append(context.job_id)
        self.log.append((self.name, context.attempt))
        if context.attempt <= self.failures:
            raise ConnectionError(f"{self.name} attempt {context.attempt}")
        return self.name


# -- retries -------------------------------------------------------------------


def test_a_retried_job_keeps_its_turn_and_later_jobs_of_its_key_wait(make_runner: MakeRunner) -> None:
    r = make_runner(2, retry=FAST)
    log: list[tuple[str, int]] = []
    first = Flaky(r, "first", log, failures=2)
    after = Flaky(r, "after", log, failures=0)
    f1 = r.submit("k", first)
    f2 = r.submit("k", after)
    assert f1.result(WAIT) == "first"
    assert f2.result(WAIT) == "after"
    assert log == [("first", 1), ("first", 2), ("first", 3), ("after", 1)]
    assert len(set(first.ids)) == 1  # one job id across the attempts
    settle(r)
    stats = r.stats()
    assert (stats.completed, stats.failed, stats.retries, stats.in_backoff) == (2, 0, 2, 0)


def test_no_worker_is_held_during_a_backoff_and_a_cancel_then_moves_the_key_on(
    make_runner: MakeRunner,
) -> None:
    r = make_runner(1, retry=Retry(attempts=5, backoff=3600, jitter=0))
    log: list[tuple[str, int]] = []
    stuck = r.submit("k", Flaky(r, "stuck", log, failures=5))
    behind = r.submit("k", lambda: "behind")
    wait_until(lambda: r.stats().in_backoff == 1, what="the job to wait for its retry")
    # The only worker is free: another key runs during the backoff.
    assert r.submit("other", lambda: "other").result(WAIT) == "other"
    assert not behind.done()
    info = r.key_info("k")
    assert (info.in_backoff, info.running, info.pending) == (True, False, 1)
    assert stuck.cancel()
    assert stuck.cancelled()
    assert behind.result(WAIT) == "behind"
    assert log == [("stuck", 1)]
    settle(r)
    stats = r.stats()
    assert (stats.cancelled, stats.in_backoff, stats.completed) == (1, 0, 2)


def test_exhausted_retries_fail_with_the_last_error_and_reach_the_dead_letter_hook(
    make_runner: MakeRunner,
) -> None:
    letters: list[DeadLetter] = []
    r = make_runner(2, retry=Retry(attempts=2, backoff=0, jitter=0), dead_letter=letters.append)
    log: list[tuple[str, int]] = []
    job = Flaky(r, "doomed", log, failures=9)
    future = r.submit("k", job)
    error = future.exception(WAIT)
    assert isinstance(error, ConnectionError)
    assert str(error) == "doomed attempt 2"
    assert isinstance(error.__context__, ConnectionError)
    assert str(error.__context__) == "doomed attempt 1"
    settle(r)
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.keys, letter.attempts, letter.error) == (("k",), 2, error)
    stats = r.stats()
    assert (stats.failed, stats.retries) == (1, 1)


def test_only_the_exceptions_the_policy_names_are_retried(make_runner: MakeRunner) -> None:
    r = make_runner(2, retry=Retry(attempts=3, backoff=0, jitter=0, on=(ConnectionError,)))
    attempts: list[int] = []

    def bad_input() -> None:
        context = r.current_job()
        assert context is not None
        attempts.append(context.attempt)
        raise ValueError("not retried")

    assert isinstance(r.submit("k", bad_input).exception(WAIT), ValueError)
    assert attempts == [1]


def test_a_predicate_decides_and_options_override_the_dispatcher(make_runner: MakeRunner) -> None:
    r = make_runner(2)  # no retry policy of its own
    log: list[tuple[str, int]] = []
    retry = Retry(attempts=4, backoff=0, jitter=0, on=lambda exc: "attempt" in str(exc))
    future = r.submit_with({"retry": retry}, ["k"], Flaky(r, "opted", log, failures=3))
    assert future.result(WAIT) == "opted"
    assert [attempt for _, attempt in log] == [1, 2, 3, 4]
    plain = r.submit("k", Flaky(r, "plain", log, failures=1))
    assert isinstance(plain.exception(WAIT), ConnectionError)


def test_halt_on_error_applies_after_the_last_attempt(make_runner: MakeRunner) -> None:
    r = make_runner(2, halt_on_error=True, retry=Retry(attempts=2, backoff=0, jitter=0))
    log: list[tuple[str, int]] = []
    first = r.submit("k", Flaky(r, "halts", log, failures=9))
    later = r.submit("k", lambda: "never")
    assert isinstance(first.exception(WAIT), ConnectionError)
    assert isinstance(later.exception(WAIT), KeyHalted)
    assert r.key_info("k").halted


def test_shutdown_with_cancel_pending_cancels_a_job_in_backoff(runner_kind: str) -> None:
    from tests.contract.runners import open_runner

    r = open_runner(runner_kind, 2, retry=Retry(attempts=3, backoff=3600, jitter=0))
    log: list[tuple[str, int]] = []
    future = r.submit("k", Flaky(r, "waits", log, failures=3))
    wait_until(lambda: r.stats().in_backoff == 1, what="the backoff")
    r.shutdown(wait=True, cancel_pending=True)
    assert future.cancelled()
    r.close()


# -- supersede -------------------------------------------------------------------


def test_supersede_keeps_the_latest_opted_in_job_per_key(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    ran: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> str:
        with lock:
            ran.append(name)
        return name

    running = r.submit("k", r.job(gate, lambda: record("running")))
    old = r.submit_with({"supersede": True}, ["k"], record, "old")
    plain = r.submit("k", record, "plain")  # did not opt in: never superseded
    wide = r.submit_with({"supersede": True}, ["k", "j"], record, "wide")  # carries j's update too
    newer = r.submit_with({"supersede": True}, ["k"], record, "newer")
    latest = r.submit_with({"supersede": True}, ["k"], record, "latest")
    for superseded in (old, newer):
        error = superseded.exception(WAIT)
        assert isinstance(error, Superseded)
        assert error.keys == ("k",)
    gate.open()
    assert [f.result(WAIT) for f in (running, plain, wide, latest)] == ["running", "plain", "wide", "latest"]
    assert ran == ["running", "plain", "wide", "latest"]
    settle(r)
    stats = r.stats()
    assert (stats.superseded, stats.completed) == (2, 4)


# -- pause, resume, cancel_pending ---------------------------------------------------


def test_a_paused_key_starts_nothing_until_resumed(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    assert r.pause("k") is True  # an idle key can be held
    assert r.pause("k") is False
    started = threading.Event()
    held = r.submit("k", started.set)
    assert r.submit("other", lambda: "other").result(WAIT) == "other"
    assert not started.is_set()
    info = r.key_info("k")
    assert (info.paused, info.pending, info.running) == (True, 1, False)
    assert r.stats().paused_keys == 1
    assert r.resume("k") is True
    held.result(WAIT)
    assert started.is_set()
    assert not r.key_info("k").paused


def test_pausing_a_running_key_lets_the_job_finish_and_holds_the_next(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    first = r.submit("k", r.job(gate, lambda: "first"))
    wait_until(lambda: r.key_info("k").running, what="the first job to start")
    r.pause("k")
    second = r.submit("k", lambda: "second")
    gate.open()
    assert first.result(WAIT) == "first"
    assert r.submit("other", lambda: None).result(WAIT) is None
    assert not second.done()
    r.resume("k")
    assert second.result(WAIT) == "second"


def test_a_multi_key_job_waits_while_any_of_its_keys_is_paused(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    r.pause("a")
    r.pause("b")
    both = r.submit_multi(["a", "b"], lambda: "both")
    r.resume("a")
    assert r.submit("c", lambda: None).result(WAIT) is None
    assert not both.done()
    r.resume("b")
    assert both.result(WAIT) == "both"


def test_start_deadlines_still_apply_to_a_paused_key(make_runner: MakeRunner) -> None:
    r = make_runner(2, start_timeout=0.05)
    r.pause("k")
    late = r.submit("k", lambda: "never")
    assert isinstance(late.exception(WAIT), StartTimeout)
    r.resume("k")
    assert r.submit("k", lambda: "runs").result(WAIT) == "runs"


def test_cancel_pending_cancels_what_has_not_started(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    gate = r.gate()
    running = r.submit("k", r.job(gate, lambda: "running"))
    wait_until(lambda: r.key_info("k").running, what="the first job to start")
    queued = [r.submit("k", lambda: "queued") for _ in range(3)]
    multi = r.submit_multi(["k", "m"], lambda: "multi")
    after_m = r.submit("m", lambda: "m moves on")
    assert r.cancel_pending("k") == 4
    assert all(f.cancelled() for f in [*queued, multi])
    assert after_m.result(WAIT) == "m moves on"
    assert r.cancel_pending("k") == 0
    assert r.cancel_pending("idle") == 0
    gate.open()
    assert running.result(WAIT) == "running"


def test_keys_lists_live_keys_deepest_first(make_runner: MakeRunner) -> None:
    r = make_runner(3)
    gates = {key: r.gate() for key in "abc"}
    futures = []
    for key, depth in (("a", 1), ("b", 3), ("c", 2)):
        futures.append(r.submit(key, r.job(gates[key])))
        futures += [r.submit(key, lambda: None) for _ in range(depth)]
    wait_until(lambda: r.stats().running == 3, what="a job of each key to start")
    r.pause("idle")
    listing = r.keys()
    assert [info.key for info in listing] == ["b", "c", "a", "idle"]
    assert [info.pending for info in listing] == [3, 2, 1, 0]
    assert all(info.running for info in listing[:3])
    assert listing[3].paused
    assert [info.key for info in r.keys(limit=2)] == ["b", "c"]
    empty = r.key_info("nothing")
    assert (empty.pending, empty.running, empty.oldest_wait_s, empty.halted, empty.paused) == (
        0,
        False,
        0.0,
        False,
        False,
    )
    for gate in gates.values():
        gate.open()
    concurrent.futures.wait(futures, timeout=WAIT)
    r.resume("idle")


def test_current_job_is_none_outside_a_job(runner: Runner) -> None:
    if isinstance(runner, AsyncioRunner):
        assert runner.call(runner.dispatcher.current_job) is None  # on the loop, in no job
    else:
        assert runner.current_job() is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempts": 0}, ValueError),
        ({"attempts": 1.5}, TypeError),
        ({"backoff": -1}, ValueError),
        ({"backoff": math.nan}, ValueError),
        ({"max_backoff": math.inf}, ValueError),
        ({"jitter": 2}, ValueError),
        ({"jitter": math.nan}, ValueError),
        ({"on": 5}, TypeError),
        ({"on": ()}, TypeError),
        ({"deadline": -0.5}, ValueError),
    ],
)
def test_bad_retry_policies_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Retry(**kwargs)


def test_bad_options_are_refused_and_nothing_is_admitted(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    with pytest.raises(TypeError):
        r.submit_with({"retry": 3}, ["k"], lambda: None)
    with pytest.raises(ValueError, match="start_timeout"):
        r.submit_with({"start_timeout": -1}, ["k"], lambda: None)
    with pytest.raises(TypeError):
        r.submit_with({"supersede": "yes"}, ["k"], lambda: None)
    with pytest.raises(ValueError, match="limit"):
        r.keys(limit=-1)
    assert r.stats().submitted == 0


def test_a_start_timeout_of_its_own(make_runner: MakeRunner) -> None:
    r = make_runner(2, start_timeout=3600)
    gate = r.gate()
    r.submit("k", r.job(gate))
    quick = r.submit_with({"start_timeout": 0.05}, ["k"], lambda: "never")
    patient = r.submit("k", lambda: "runs")
    assert isinstance(quick.exception(WAIT), StartTimeout)
    gate.open()
    assert patient.result(WAIT) == "runs"
