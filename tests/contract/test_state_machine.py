"""A Hypothesis state machine driving a dispatcher against a model of its queues.

The model knows which jobs must be able to finish: a job is stuck when it
waits, directly or through earlier jobs sharing a key, behind a gated job
whose gate is closed. At each ``settle`` step every job that is not stuck
must finish, every gated job that is not stuck must be running (no worker
idles while a job is runnable), and no stuck job may have started.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyed_dispatch import StartTimeout
from keyed_dispatch.testing import OrderRecorder, RecordedJob
from tests.contract.test_stats import assert_consistent
from tests.helpers import WAIT, close_and_check, new_dispatcher, wait_until

MAX_WORKERS = 3
KEYS = st.sampled_from(["a", "b", "c", "d"])


@dataclass
class ModelJob:
    keys: tuple[Hashable, ...]
    future: concurrent.futures.Future[Any]
    record: RecordedJob
    gate: threading.Event | None = None
    cancelled: bool = False  # cancel() returned True: the job never runs
    stuck: bool = field(default=False, compare=False)


class DispatcherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dispatcher = new_dispatcher(MAX_WORKERS)
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
        return [job for job in self.jobs if job.gate is not None and not job.gate.is_set()]

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
            elif job.gate is not None and not job.gate.is_set():
                gated.append(job)
                blocked.update(job.keys)
            else:
                finishing.append(job)
        return finishing, gated, stuck

    def add(self, keys: list[str], gate: threading.Event | None) -> None:
        body = (lambda: gate.wait(WAIT)) if gate is not None else None
        future = self.recorder.submit(self.dispatcher, keys, body)
        record = self.recorder.jobs[-1]
        self.jobs.append(ModelJob(record.keys, future, record, gate))

    # -- rules -----------------------------------------------------------

    @rule(key=KEYS)
    def submit(self, key: str) -> None:
        self.add([key], None)

    @rule(keys=st.lists(KEYS, min_size=2, max_size=3, unique=True))
    def submit_multi(self, keys: list[str]) -> None:
        self.add(keys, None)

    # Fewer closed gates than workers: a worker is always free for the
    # jobs that can run, so the model needs no notion of worker shortage.
    @precondition(lambda self: len(self.closed_gates()) < MAX_WORKERS - 1)
    @rule(keys=st.lists(KEYS, min_size=1, max_size=2, unique=True))
    def block(self, keys: list[str]) -> None:
        self.add(keys, threading.Event())

    @precondition(lambda self: bool(self.closed_gates()))
    @rule(data=st.data())
    def unblock(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.closed_gates()))
        assert job.gate is not None
        job.gate.set()

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.update_model()
        job = data.draw(st.sampled_from(self.jobs))
        was_stuck = job.stuck
        # A job cancelled before stays cancelled (cancel() is True again).
        job.cancelled = job.future.cancel()
        if was_stuck:
            # It cannot have started, so the cancel must win.
            assert job.cancelled

    @rule()
    def settle(self) -> None:
        finishing, gated, stuck = self.update_model()
        _, not_done = concurrent.futures.wait([job.future for job in finishing], timeout=WAIT)
        assert not not_done, f"{len(not_done)} runnable jobs did not finish"
        # Work conservation: every runnable gated job holds a worker, and
        # the stuck jobs (only those) are pending.
        wait_until(
            lambda: (
                (s := self.dispatcher.stats()).running == len(gated)
                and s.pending == len(stuck)
                and s.cancelled == self.expected_cancels()
            ),
            what=f"{len(gated)} running and {len(stuck)} pending jobs",
        )
        for job in gated:
            wait_until(job.record.starts.__len__, what="a gated job to start")
        for job in stuck:
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
                with self.dispatcher.exclusive(keys, timeout=0.001):
                    raise AssertionError(f"exclusive({keys}) entered behind a closed gate")
            except StartTimeout:
                self.exclusive_timeouts += 1
            return
        concurrent.futures.wait([job.future for job in finishing], timeout=WAIT)
        with self.dispatcher.exclusive(keys, timeout=WAIT):
            self.exclusive_blocks += 1

    # -- invariants ------------------------------------------------------

    @invariant()
    def stats_are_consistent(self) -> None:
        stats = self.dispatcher.stats()
        assert_consistent(stats)
        # A block that timed out was admitted, then cancelled.
        assert stats.submitted == len(self.jobs) + self.exclusive_blocks + self.exclusive_timeouts
        # A cancel can win against a worker that has taken the job but not
        # started it yet; that worker counts it when it retires the job.
        assert stats.cancelled <= self.expected_cancels()
        assert stats.workers <= MAX_WORKERS

    def expected_cancels(self) -> int:
        return sum(job.cancelled for job in self.jobs) + self.exclusive_timeouts

    def teardown(self) -> None:
        try:
            for job in self.jobs:
                if job.gate is not None:
                    job.gate.set()
            _, not_done = concurrent.futures.wait([job.future for job in self.jobs], timeout=WAIT)
            assert not not_done
            self.recorder.check()
        finally:
            close_and_check(self.dispatcher)
        stats = self.dispatcher.stats()
        assert stats.active_shards == 0
        assert stats.cancelled == self.expected_cancels()
        assert stats.completed + stats.cancelled == stats.submitted


DispatcherMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_dispatcher_state_machine = pytest.mark.slow(DispatcherMachine.TestCase)
