"""Random workloads mixing retries, supersede, pause/resume and cancels, on every runner."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyed_dispatch import Retry, Superseded
from tests.contract.runners import RUNNERS, Runner, running
from tests.helpers import WAIT

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kind", RUNNERS)]

KEYS = "abc"

op = st.one_of(
    st.tuples(
        st.just("submit"),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True),
        st.integers(0, 3),  # failed attempts before a success (3: never succeeds)
        st.booleans(),  # supersede
    ),
    st.tuples(st.sampled_from(["pause", "resume", "cancel_pending"]), st.sampled_from(KEYS)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
)


@dataclass
class Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: itertools.count[int] = field(default_factory=itertools.count)
    events: list[tuple[int, str, int, int]] = field(default_factory=list)  # (time, kind, job, attempt)
    live: dict[str, int] = field(default_factory=dict)  # key -> job running on it
    paused: set[str] = field(default_factory=set)  # paused as the test sees it
    # A job the engine took before pause() returned may begin its body after
    # it: one start is allowed per key whose job was running at the pause.
    grace: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def tick(self, kind: str, job: int, attempt: int) -> int:
        now = next(self.clock)
        self.events.append((now, kind, job, attempt))
        return now


def make_job(r: Runner, log: Log, index: int, keys: list[str], failures: int) -> Any:
    def job() -> int:
        context = r.current_job()
        attempt = 0 if context is None else context.attempt
        with log.lock:
            log.tick("start", index, attempt)
            for key in keys:
                if key in log.live:
                    log.violations.append(f"job {index} started on {key} while job {log.live[key]} runs")
                if key in log.paused:
                    if log.grace.get(key):
                        log.grace[key] -= 1
                    else:
                        log.violations.append(f"job {index} attempt {attempt} started on paused key {key}")
                log.live[key] = index
        fail = attempt <= failures
        with log.lock:
            for key in keys:
                log.live.pop(key, None)
            log.tick("end", index, attempt)
        if fail:
            raise ConnectionError(f"job {index} attempt {attempt}")
        return index

    return job


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=25), workers=st.integers(1, 3))
def test_policies_keep_order_exclusion_and_resolve_every_future(
    kind: str, ops: list[tuple[Any, ...]], workers: int
) -> None:
    log = Log()
    jobs: list[tuple[list[str], int, bool, concurrent.futures.Future[Any]]] = []
    cancels: dict[int, int] = {}  # job -> log time a cancel() returned True
    with running(kind, workers, debug=False, retry=Retry(attempts=3, backoff=0, jitter=0)) as r:
        for item in ops:
            if item[0] == "submit":
                _, keys, failures, supersede = item
                job = make_job(r, log, len(jobs), keys, failures)
                future = r.submit_with({"supersede": supersede}, keys, job)
                jobs.append((keys, failures, supersede, future))
            elif item[0] == "pause":
                r.pause(item[1])
                taken = r.key_info(item[1]).running
                with log.lock:
                    log.paused.add(item[1])
                    if taken:
                        log.grace[item[1]] = 1
            elif item[0] == "resume":
                with log.lock:
                    log.paused.discard(item[1])
                r.resume(item[1])
            elif item[0] == "cancel_pending":
                r.cancel_pending(item[1])
            elif jobs:
                index = item[1] % len(jobs)
                if jobs[index][3].cancel():
                    with log.lock:
                        cancels.setdefault(index, log.tick("cancel", index, 0))
        with log.lock:
            log.paused.clear()
        for key in KEYS:
            r.resume(key)
        _, not_done = concurrent.futures.wait([job[3] for job in jobs], timeout=WAIT)
        assert not not_done, f"{len(not_done)} futures never resolved"
    stats = r.stats()

    assert not log.violations, log.violations
    attempts: dict[int, list[int]] = {}
    first_start: dict[int, int] = {}
    last_end: dict[int, int] = {}
    for now, kind_, index, attempt in log.events:
        if kind_ == "start":
            attempts.setdefault(index, []).append(attempt)
            first_start.setdefault(index, now)
        elif kind_ == "end":
            last_end[index] = now
    for index, (keys, failures, supersede, future) in enumerate(jobs):
        ran = attempts.get(index, [])
        assert ran == list(range(1, len(ran) + 1)), f"job {index} attempts {ran}"
        if future.cancelled():
            cancelled_at = cancels.get(index)
            since = cancelled_at or 0
            later = [t for t, k, i, _ in log.events if i == index and k == "start" and since < t]
            if cancelled_at is not None and not r.cancels_running:
                assert not later, f"job {index} started an attempt after its cancel"
            continue
        error = future.exception()
        if isinstance(error, Superseded):
            assert supersede, f"job {index} did not opt in to supersede"
            assert not ran, f"superseded job {index} ran"
            continue
        assert ran, f"job {index} resolved without running: {error!r}"
        if failures >= len(ran) and len(ran) == 3:
            assert isinstance(error, ConnectionError)
        elif error is None:
            assert future.result() == index
            assert len(ran) == failures + 1
        # Order: every earlier job sharing a key finished all its attempts first.
        for earlier in range(index):
            if earlier in first_start and set(jobs[earlier][0]) & set(keys):
                assert last_end[earlier] < first_start[index], f"job {index} overtook job {earlier}"
    outcomes = stats.completed + stats.failed + stats.cancelled + stats.timed_out + stats.superseded
    assert stats.submitted == len(jobs) == outcomes
    assert (stats.pending, stats.running, stats.in_backoff) == (0, 0, 0)
