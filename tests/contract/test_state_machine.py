"""A Hypothesis state machine driving each runner against a model of its queues.

The model knows which jobs must be able to finish: a job is stuck when it
waits, directly or through earlier jobs sharing a key, behind a gated job
whose gate is closed. At each ``settle`` step every job that is not stuck
must finish, every gated job that is not stuck must be running (no worker
idles while a job is runnable), no stuck job may have started, and exactly
the keys of the gated and stuck jobs hold shards.

A cancel that wins means the job never runs if it had not started; the
asyncio runner also cancels a running job, whose keys move on once it has
unwound. On asyncio, jobs also run inline in a caller task (``run_multi``).
One machine per runner: a subclass that names its runner.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyed_dispatch import StartTimeout
from keyed_dispatch.testing import OrderRecorder, RecordedJob
from tests.contract.runners import AsyncioRunner, Gate, Runner, declare_cancelled_runs, open_runner
from tests.helpers import WAIT, assert_consistent, wait_until

MAX_WORKERS = 3
KEYS = st.sampled_from(["a", "b", "c", "d"])


@dataclass
class ModelJob:
    keys: tuple[Hashable, ...]
    gate: Gate | None = None
    fail: bool = False  # set when its gate opens: the job then raises
    future: concurrent.futures.Future[Any] | None = None
    record: RecordedJob | None = None
    cancelled: bool = False  # cancel() returned True: the job stops or never runs
    stuck: bool = field(default=False, compare=False)


class DispatcherMachine(RuleBasedStateMachine):
    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.runner: Runner = open_runner(self.kind, MAX_WORKERS, debug=False)
        self.recorder = OrderRecorder()
        self.jobs: list[ModelJob] = []
        self.exclusive_blocks = 0
        self.exclusive_timeouts = 0

    # -- model ---------------------------------------------------------

    # What rules draw from depends only on earlier draws, never on how a
    # race came out (whether a cancel won), so Hypothesis replays an
    # example exactly. A cancelled gated job still counts as a closed gate
    # here: that only allows fewer gates.
    def closed_gates(self) -> list[ModelJob]:
        return [job for job in self.jobs if job.gate is not None and not job.gate.is_open()]

    def update_model(self) -> tuple[list[ModelJob], list[ModelJob], list[ModelJob]]:
        """Split live jobs into (will finish, gated and running, stuck)."""
        blocked: set[Hashable] = set()
        finishing: list[ModelJob] = []
        gated: list[ModelJob] = []
        stuck: list[ModelJob] = []
        for job in self.jobs:
            job.stuck = False
            if job.cancelled:
                continue
            if blocked.intersection(job.keys):
                job.stuck = True
                stuck.append(job)
                blocked.update(job.keys)
            elif job.gate is not None and not job.gate.is_open():
                gated.append(job)
                blocked.update(job.keys)
            else:
                finishing.append(job)
        return finishing, gated, stuck

    def add(self, keys: list[str], gated: bool, *, inline: bool = False) -> None:
        entry = ModelJob(tuple(keys), self.runner.gate() if gated else None)

        def finish() -> None:
            if entry.fail:
                raise ValueError("failed on purpose")

        job = self.runner.job(entry.gate, finish) if entry.gate is not None else self.runner.job(finish)
        if inline:
            assert isinstance(self.runner, AsyncioRunner)
            wrapped = self.recorder.wrap(keys, job)
            entry.future = self.runner.run_multi(keys, wrapped)
            self.recorder.admitted(wrapped)
            self.recorder.jobs[-1].future = entry.future
        else:
            entry.future = self.recorder.submit(self.runner, keys, job)
        entry.record = self.recorder.jobs[-1]
        self.jobs.append(entry)

    def futures(self, jobs: list[ModelJob]) -> list[concurrent.futures.Future[Any]]:
        return [job.future for job in jobs if job.future is not None]

    # -- rules -----------------------------------------------------------

    @rule(key=KEYS)
    def submit(self, key: str) -> None:
        self.add([key], gated=False)

    @rule(keys=st.lists(KEYS, min_size=2, max_size=3, unique=True))
    def submit_multi(self, keys: list[str]) -> None:
        self.add(keys, gated=False)

    # Fewer closed gates than workers: a worker is always free for the
    # jobs that can run, so the model needs no notion of worker shortage.
    @precondition(lambda self: len(self.closed_gates()) < MAX_WORKERS - 1)
    @rule(keys=st.lists(KEYS, min_size=1, max_size=2, unique=True))
    def block(self, keys: list[str]) -> None:
        self.add(keys, gated=True)

    @precondition(lambda self: bool(self.closed_gates()))
    @rule(data=st.data(), fail=st.booleans())
    def unblock(self, data: st.DataObject, fail: bool) -> None:
        job = data.draw(st.sampled_from(self.closed_gates()))
        assert job.gate is not None
        job.fail = fail
        job.gate.open()

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.try_cancel(data.draw(st.sampled_from(self.jobs)))

    # Most jobs are done by the time a cancel comes; these are not: a gated
    # job (running, or queued for a worker) and the jobs behind it.
    @precondition(lambda self: bool(self.held_jobs()))
    @rule(data=st.data())
    def cancel_held(self, data: st.DataObject) -> None:
        self.try_cancel(data.draw(st.sampled_from(self.held_jobs())))

    def held_jobs(self) -> list[ModelJob]:
        # As update_model's gated and stuck jobs, but blind to cancels,
        # whose outcome may be a race (see closed_gates).
        blocked: set[Hashable] = set()
        held = []
        for job in self.jobs:
            if blocked.intersection(job.keys) or (job.gate is not None and not job.gate.is_open()):
                held.append(job)
                blocked.update(job.keys)
        return held

    def try_cancel(self, job: ModelJob) -> None:
        assert job.future is not None
        self.update_model()
        was_stuck = job.stuck
        # A job cancelled before stays cancelled (a second cancel() of an
        # asyncio future returns False).
        job.cancelled = job.cancelled or job.future.cancel()
        if was_stuck:
            # It cannot have started, so the cancel must win.
            assert job.cancelled

    @rule()
    def settle(self) -> None:
        finishing, gated, stuck = self.update_model()
        _, not_done = concurrent.futures.wait(self.futures(finishing), timeout=WAIT)
        assert not not_done, f"{len(not_done)} runnable jobs did not finish"
        # Work conservation: every runnable gated job holds a worker, and
        # the stuck jobs (only those) are pending.
        held = {key for job in gated + stuck for key in job.keys}
        wait_until(
            lambda: (
                (s := self.runner.stats()).running == len(gated)
                and s.pending == len(stuck)
                and s.cancelled == self.expected_cancels()
                and s.active_shards == len(held)
            ),
            what=f"{len(gated)} running and {len(stuck)} pending jobs on {len(held)} keys",
        )
        for job in gated:
            assert job.record is not None
            wait_until(job.record.starts.__len__, what="a gated job to start")
        for job in stuck:
            assert job.record is not None
            assert job.future is not None
            assert not job.record.starts, f"job {job.record.job_id} started behind a closed gate"
            assert not job.future.done()

    @rule(keys=st.lists(KEYS, min_size=1, max_size=2, unique=True))
    def exclusive(self, keys: list[str]) -> None:
        # The keys are free once every job holding them is done: then the
        # block must get in; behind a closed gate it must time out.
        finishing, gated, stuck = self.update_model()
        busy = {key for job in gated + stuck for key in job.keys}
        if busy.intersection(keys):
            try:
                with self.runner.exclusive(keys, timeout=0.001):
                    raise AssertionError(f"exclusive({keys}) entered behind a closed gate")
            except StartTimeout:
                self.exclusive_timeouts += 1
            return
        concurrent.futures.wait(self.futures(finishing), timeout=WAIT)
        with self.runner.exclusive(keys, timeout=WAIT):
            self.exclusive_blocks += 1

    # -- invariants ------------------------------------------------------

    @invariant()
    def stats_are_consistent(self) -> None:
        stats = self.runner.stats()
        assert_consistent(stats)
        # A block that timed out was admitted, then cancelled.
        assert stats.submitted == len(self.jobs) + self.exclusive_blocks + self.exclusive_timeouts
        # A cancel can win against a worker that has taken the job but not
        # started it yet (that worker counts it when it retires the job),
        # and an asyncio job cancelled while it runs counts once unwound.
        assert stats.cancelled <= self.expected_cancels()
        assert stats.workers <= MAX_WORKERS

    def expected_cancels(self) -> int:
        return sum(job.cancelled for job in self.jobs) + self.exclusive_timeouts

    def teardown(self) -> None:
        try:
            for job in self.jobs:
                if job.gate is not None:
                    job.gate.open()
            _, not_done = concurrent.futures.wait(self.futures(self.jobs), timeout=WAIT)
            assert not not_done
            declare_cancelled_runs(self.recorder, self.runner)
            self.recorder.check()
            for job in self.jobs:
                assert job.future is not None
                if job.future.cancelled():
                    assert job.cancelled
                else:
                    assert not job.cancelled
                    assert isinstance(job.future.exception(), ValueError) == job.fail
        finally:
            self.runner.close()
        stats = self.runner.stats()
        assert stats.active_shards == 0
        assert stats.cancelled == self.expected_cancels()
        assert stats.completed + stats.failed + stats.cancelled == stats.submitted


class ThreadMachine(DispatcherMachine):
    kind = "thread"


class AsyncioMachine(DispatcherMachine):
    kind = "asyncio"

    @rule(keys=st.lists(KEYS, min_size=1, max_size=3, unique=True))
    def run_inline(self, keys: list[str]) -> None:
        self.add(keys, gated=False, inline=True)

    @precondition(lambda self: len(self.closed_gates()) < MAX_WORKERS - 1)
    @rule(keys=st.lists(KEYS, min_size=1, max_size=2, unique=True))
    def block_inline(self, keys: list[str]) -> None:
        self.add(keys, gated=True, inline=True)


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ThreadMachine.TestCase.settings = MACHINE_SETTINGS
AsyncioMachine.TestCase.settings = MACHINE_SETTINGS
TestThreadMachine = pytest.mark.slow(ThreadMachine.TestCase)
TestAsyncioMachine = pytest.mark.slow(AsyncioMachine.TestCase)
