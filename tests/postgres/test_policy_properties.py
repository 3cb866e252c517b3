"""Random mixes of submits, batches, retries, supersede, pause, cancel and cancel_pending on PostgreSQL."""

# ruff: noqa: S608  # the tests build SQL from test schema names

from __future__ import annotations

import concurrent.futures
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import Retry, Superseded  # noqa: E402
from keyed_dispatch.postgres import JobFailed, PostgresDispatcher, PostgresFuture, PostgresJob, key_text  # noqa: E402
from tests.conftest import WorkerFactory  # noqa: E402
from tests.postgres import tasks  # noqa: E402
from tests.postgres.support import sql  # noqa: E402

pytestmark = pytest.mark.slow

LOGGED = "tests.postgres.tasks:logged"
RETRY = Retry(attempts=3, backoff=0.02, jitter=0)
KEYS = "abc"

op = st.one_of(
    st.tuples(
        st.just("submit"),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True),
        st.integers(0, 3),  # failed attempts before a success (3: never succeeds)
        st.booleans(),  # supersede
        st.booleans(),  # retry
    ),
    st.tuples(
        st.just("batch"),
        # (keys, failed attempts before a success) per job, the whole batch's supersede and retry
        st.lists(
            st.tuples(
                st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True), st.integers(0, 3)
            ),
            min_size=1,
            max_size=4,
        ),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.sampled_from(["pause", "resume", "cancel_pending"]), st.sampled_from(KEYS)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
)

# Each example uses keys of its own on the shared schema and workers.
_examples = itertools.count()
_with_workers: set[str] = set()  # schemas whose workers the first example started


@dataclass
class Submitted:
    keys: list[str]
    failures: int
    supersede: bool
    retry: bool
    future: PostgresFuture


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(op, min_size=1, max_size=20))
def test_policies_keep_order_exclusion_and_resolve_every_future_across_workers(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, ops: list[tuple[Any, ...]]
) -> None:
    # The fixtures are shared by the examples: two workers on one schema;
    # the first example starts them.
    if pg_schema not in _with_workers:
        _with_workers.add(pg_schema)
        pg_worker()
        pg_worker()
    prefix = f"e{next(_examples)}-"
    jobs: list[Submitted] = []
    violations: list[str] = []
    paused: dict[str, dict[int, int]] = {}  # key -> attempts of its jobs when its pause returned

    def attempts_on(key: str) -> dict[int, int]:
        text = key_text(prefix + key)
        rows = sql(pg_dsn, f"SELECT id, attempt FROM {pg_schema}.jobs WHERE keys @> ARRAY[%s]", (text,))
        return dict(rows)

    def resume(d: PostgresDispatcher, key: str) -> None:
        if key in paused:
            held = paused.pop(key)
            for job_id, attempt in attempts_on(key).items():
                if attempt != held.get(job_id, 0):
                    violations.append(f"job {job_id} on paused key {key} started (attempt {attempt})")
        d.resume(prefix + key)

    with tasks.ledger_lock:
        # Job ids repeat across schemas: only this example's records count.
        first_record = len(tasks.ledger)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        for item in ops:
            if item[0] == "submit":
                _, keys, failures, supersede, retry = item
                view = d.options(retry=RETRY if retry else None, supersede=supersede)
                future = view.submit_multi([prefix + key for key in keys], LOGGED, failures)
                jobs.append(Submitted(keys, failures, supersede, retry, future))
            elif item[0] == "batch":
                _, specs, supersede, retry = item
                view = d.options(retry=RETRY if retry else None, supersede=supersede)
                batch = [PostgresJob.multi([prefix + key for key in keys], LOGGED, n) for keys, n in specs]
                for (keys, failures), future in zip(specs, view.submit_many(batch), strict=True):
                    jobs.append(Submitted(keys, failures, supersede, retry, future))
            elif item[0] == "pause":
                d.pause(prefix + item[1])
                paused.setdefault(item[1], attempts_on(item[1]))
            elif item[0] == "resume":
                resume(d, item[1])
            elif item[0] == "cancel_pending":
                d.cancel_pending(prefix + item[1])
            elif jobs:
                jobs[item[1] % len(jobs)].future.cancel()
        for key in KEYS:
            resume(d, key)
        futures = [job.future for job in jobs]
        _, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done, f"{len(not_done)} futures never resolved"
        infos = [d.key_info(prefix + key) for key in KEYS]
        letters = {letter.job_id for letter in d.dead_letters()}
        stats = d.stats()
    assert not violations, violations

    ids = [job.future.job_id for job in jobs]
    with tasks.ledger_lock:
        events = [event for event in tasks.ledger[first_record:] if event[2] in set(ids)]
        assert not tasks.overlaps, tasks.overlaps
    ran: dict[int, list[int]] = defaultdict(list)
    first_start: dict[int, int] = {}
    last_end: dict[int, int] = {}
    for seq, phase, job_id, attempt in events:
        if phase == "start":
            ran[job_id].append(attempt)
            first_start.setdefault(job_id, seq)
        else:
            last_end[job_id] = seq
    states = dict(sql(pg_dsn, f"SELECT id, state FROM {pg_schema}.jobs WHERE id = ANY(%s)", (ids,)))

    for index, job in enumerate(jobs):
        job_id, future = job.future.job_id, job.future
        attempts = ran.get(job_id, [])
        assert attempts == list(range(1, len(attempts) + 1)), f"job {job_id} attempts {attempts}"
        if future.cancelled():
            assert states[job_id] == "cancelled"
            continue
        error = future.exception()
        if isinstance(error, Superseded):
            assert job.supersede, f"job {job_id} did not opt in to supersede"
            assert not attempts, f"superseded job {job_id} ran"
            assert states[job_id] == "superseded"
            continue
        # Ran, with as many attempts as its policy and its failures make.
        tries = min(job.failures + 1, RETRY.attempts) if job.retry else 1
        assert len(attempts) == tries, f"job {job_id}: attempts {attempts}, expected {tries}"
        if job.failures >= tries:
            assert isinstance(error, JobFailed), f"job {job_id}: {error!r}"
            assert (error.error_type, error.attempt) == ("ConnectionError", tries)
            assert states[job_id] == "failed"
            assert (job_id in letters) == job.retry  # dead letters: jobs with a policy only
        else:
            assert future.result() == tries
            assert states[job_id] == "completed"
        # Order: every earlier job sharing a key finished all its attempts first.
        for earlier in jobs[:index]:
            if earlier.future.job_id in first_start and set(earlier.keys) & set(job.keys):
                assert last_end[earlier.future.job_id] < first_start[job_id], (
                    f"job {job_id} overtook job {earlier.future.job_id}"
                )
    # Every job that ran is one whose row says it started, and the keys are idle.
    started = sql(pg_dsn, f"SELECT id FROM {pg_schema}.jobs WHERE id = ANY(%s) AND attempt > 0", (ids,))
    assert {row[0] for row in started} == set(ran)
    assert [(info.pending, info.running, info.paused, info.in_backoff) for info in infos] == [
        (0, False, False, False)
    ] * len(KEYS)
    assert sum(
        state in ("completed", "failed", "cancelled", "superseded") for state in states.values()
    ) == len(jobs)
    # The examples run one after another, each drained: the whole queue is idle.
    assert (stats.queued, stats.running, stats.in_backoff, stats.paused_keys, stats.awaiting) == (
        0,
        0,
        0,
        0,
        0,
    )
    [(total,)] = sql(pg_dsn, f"SELECT count(*) FROM {pg_schema}.jobs")
    assert stats.completed + stats.failed + stats.cancelled + stats.superseded + stats.expired == total
