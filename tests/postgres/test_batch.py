"""Batch submits (submit_many) and the worker's combined finish and claim (finish_claim)."""

# ruff: noqa: S608  # the tests build SQL from test schema names

from __future__ import annotations

import concurrent.futures
import json
import math
import secrets
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

import pytest

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import DispatcherClosed, Retry, StartTimeout, Superseded  # noqa: E402
from keyed_dispatch.postgres import (  # noqa: E402
    JobFailed,
    PostgresDispatcher,
    PostgresJob,
    key_text,
    run_worker,
)
from keyed_dispatch.postgres._dispatcher import install_schema  # noqa: E402
from keyed_dispatch.postgres._schema import migrations  # noqa: E402
from tests.conftest import WorkerFactory  # noqa: E402
from tests.postgres import tasks  # noqa: E402
from tests.postgres.support import LossyProxy, sql, wait_until  # noqa: E402

if TYPE_CHECKING:
    from psycopg import Connection

pytestmark = pytest.mark.slow

ECHO = "tests.postgres.tasks:echo"
LOGGED = "tests.postgres.tasks:logged"
BROKEN = "tests.postgres.tasks:broken"


def _blockers(dsn: str, schema: str, ids: list[int]) -> list[int]:
    rows = sql(dsn, f"SELECT id, blockers FROM {schema}.jobs WHERE id = ANY(%s)", (ids,))
    by_id = dict(rows)
    return [by_id[job_id] for job_id in ids]


# -- the item ---------------------------------------------------------------------------


def test_a_job_reads_as_the_submit_it_stands_for() -> None:
    job = PostgresJob(("BTC", 1), ECHO, 1, [2], side="buy")
    assert (job.keys, job.func, job.args, job.kwargs) == ((("BTC", 1),), ECHO, (1, [2]), {"side": "buy"})
    multi = PostgresJob.multi(iter(["a", "b", "a"]), ECHO, key="not a key")
    assert (multi.keys, multi.kwargs) == (("a", "b"), {"key": "not a key"})
    assert multi == PostgresJob.multi(["a", "b"], ECHO, key="not a key")
    with pytest.raises(AttributeError):
        job.func = "x:y"  # type: ignore[misc]
    # The key set is refused as submit_multi refuses it.
    with pytest.raises(ValueError, match="at least one key"):
        PostgresJob.multi([], ECHO)
    with pytest.raises(TypeError, match="not a single str"):
        PostgresJob.multi("ab", ECHO)
    with pytest.raises(TypeError, match="unhashable"):
        PostgresJob([1], ECHO)  # type: ignore[arg-type]


# -- order ------------------------------------------------------------------------------


def test_a_batch_is_admitted_as_submits_in_a_row_would_be(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    def jobs(prefix: str) -> list[tuple[list[str], int]]:
        return [([f"{prefix}a"], 0), ([f"{prefix}b"], 0), ([f"{prefix}a", f"{prefix}c"], 0)] + [
            ([f"{prefix}{key}"], 0) for key in "cabca"
        ]

    with tasks.ledger_lock:
        # Job ids repeat across schemas: only this test's records count.
        first_record = len(tasks.ledger)
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        # The same jobs, once submitted one by one, once in a batch between
        # single submits on the same keys: the same queue.
        single = [d.submit("1-a", LOGGED, 0)]
        single += [d.submit_multi(keys, LOGGED, n) for keys, n in jobs("1-")]
        single.append(d.submit("1-a", LOGGED, 0))
        batched = [d.submit("2-a", LOGGED, 0)]
        batched += d.submit_many(PostgresJob.multi(keys, LOGGED, n) for keys, n in jobs("2-"))
        batched.append(d.submit("2-a", LOGGED, 0))
        ids = [future.job_id for future in batched]
        assert ids == sorted(ids)
        assert _blockers(pg_dsn, pg_schema, ids) == _blockers(pg_dsn, pg_schema, [f.job_id for f in single])
        assert _blockers(pg_dsn, pg_schema, ids) == [0, 1, 0, 1, 1, 1, 1, 1, 1, 1]
        pg_worker()
        pg_worker()
        assert [future.result(20) for future in batched] == [1] * len(batched)
    # Each key's jobs ran one at a time, in admission order.
    keys_of = dict(zip(ids, [["2-a"], *[keys for keys, _ in jobs("2-")], ["2-a"]], strict=True))
    with tasks.ledger_lock:
        assert not tasks.overlaps, tasks.overlaps
        events = [(phase, job_id) for _, phase, job_id, _ in tasks.ledger[first_record:] if job_id in keys_of]
    for key in ("2-a", "2-b", "2-c"):
        mine = [(phase, job_id) for phase, job_id in events if key in keys_of[job_id]]
        expected = [job_id for job_id in ids if key in keys_of[job_id]]
        assert mine == [(phase, job_id) for job_id in expected for phase in ("start", "end")]


def test_batches_from_many_threads_keep_each_batch_together(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, max_connections=4) as d:
        barrier = threading.Barrier(4)

        def submit(n: int) -> list[int]:
            barrier.wait()
            futures = d.submit_many(PostgresJob(f"k{m % 3}", ECHO, n, m) for m in range(50))
            return [future.job_id for future in futures]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            batches = list(pool.map(submit, range(4)))
        for ids in batches:
            assert ids == sorted(ids)
        # Each batch is one transaction: on a key, no other batch's job comes between two of its jobs.
        rows = sql(pg_dsn, f"SELECT id, args FROM {pg_schema}.jobs ORDER BY id")
        owners = [args[0] for _, args in rows]
        for n in range(4):
            first, last = owners.index(n), len(owners) - 1 - owners[::-1].index(n)
            assert owners[first : last + 1] == [n] * 50


# -- all or nothing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "error"),
    [
        (PostgresJob("k", "tests.postgres.tasks:missing"), ImportError),
        (PostgresJob("k", "tests.postgres.tasks:unregistered"), LookupError),
        (PostgresJob("k", "tasks.echo"), ValueError),
        (PostgresJob("k", tasks.echo), TypeError),  # type: ignore[arg-type]
        (PostgresJob("k", ECHO, object()), TypeError),
        (PostgresJob("k", ECHO, math.nan), TypeError),
        (PostgresJob("k", ECHO, "a\x00b"), ValueError),
        (PostgresJob("k", ECHO, when="a\ud800"), ValueError),
        (PostgresJob(b"k", ECHO), TypeError),
        (PostgresJob(math.inf, ECHO), ValueError),
        (PostgresJob.multi(["k", "x" * 2000], ECHO), ValueError),
    ],
    ids=[
        "unknown-function",
        "unregistered-function",
        "malformed-name",
        "function-object",
        "unserializable-argument",
        "nan-argument",
        "nul-argument",
        "surrogate-keyword",
        "bytes-key",
        "infinite-key",
        "long-key",
    ],
)
def test_a_bad_job_refuses_the_whole_batch_with_the_error_submit_gives(
    pg_dsn: str, pg_schema: str, job: PostgresJob, error: type[Exception]
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        good = [PostgresJob("k", ECHO, n) for n in range(3)]
        with pytest.raises(error) as batch:
            d.submit_many([*good, job, *good])
        with pytest.raises(error) as single:
            d.submit_multi(job.keys, job.func, *job.args, **job.kwargs)
        assert str(batch.value) == str(single.value)
        if hasattr(batch.value, "__notes__"):
            assert batch.value.__notes__ == ["refused job 3 of the batch (nothing was submitted)"]
        stats = d.stats()
        assert (stats.queued, stats.awaiting) == (0, 0)
        assert sql(pg_dsn, f"SELECT count(*) FROM {pg_schema}.jobs") == [(0,)]


def test_what_the_database_refuses_refuses_the_whole_batch(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, max_connections=1) as d:
        malformed: list[object] = [
            ("k", ECHO),
            ["k", ECHO, (), {}],
            ("k", ECHO, "ab", {}),
            ("k", ECHO, 1, {}),
            ("k", ECHO, (), [("a", 1)]),
            ("k", ECHO, (), {1: "a"}),
        ]
        for item in malformed:
            with pytest.raises(TypeError, match=r"PostgresJob items or|the args of|the kwargs of") as error:
                d.submit_many([PostgresJob("k", ECHO), item])  # type: ignore[list-item]
            if hasattr(error.value, "__notes__"):
                assert error.value.__notes__ == ["refused job 1 of the batch (nothing was submitted)"]
        d.submit_many([PostgresJob("k", ECHO)])  # a pooled connection

        # Past the key check: a key too long for the index, refused by the server.
        def batch(*jobs: list[Any]) -> str:
            return json.dumps([[str(uuid.uuid4()), *job] for job in jobs])

        huge = batch([[key_text("k")], ECHO, [], {}], [[secrets.token_hex(5000)], ECHO, [], {}])
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="index row"):
            d._call(d._q.submit_many, (huge, None, None, False))
        assert len(d._idle) == 1  # the connection is fine: kept
        assert d.stats().queued == 1  # only the first batch's job
        # The function checks what it is given, as submit() does.
        refused = {
            "at least one key": batch([[], ECHO, [], {}]),
            "a job of submit_many is": batch([["1"], ECHO, {}, {}]),
            "needs a JSON array": json.dumps({"jobs": []}),
        }
        for match, jobs in refused.items():
            with pytest.raises(psycopg.errors.RaiseException, match=match):
                d._call(d._q.submit_many, (jobs, None, None, False))
        for bad in ([[1], ECHO, [], {}], [["1"], ECHO, []], "job"):
            with pytest.raises(psycopg.errors.RaiseException, match="a job of submit_many is"):
                d._call(
                    d._q.submit_many,
                    (batch(bad) if isinstance(bad, list) else f'["{bad}"]', None, None, False),
                )
        for policy in ('{"attempts": "many"}', "{}"):
            with pytest.raises(psycopg.errors.RaiseException, match="retry policy needs numbers"):
                d._call(d._q.submit_many, (batch([["1"], ECHO, [], {}]), None, policy, False))
        assert d.stats().queued == 1


def test_an_empty_batch_writes_nothing_and_a_closed_dispatcher_refuses_any(
    pg_dsn: str, pg_schema: str
) -> None:
    d = PostgresDispatcher(pg_dsn, schema=pg_schema)
    assert d.submit_many([]) == []
    assert d.options(retry=Retry(2)).submit_many(iter([])) == []
    assert d._idle == []  # not even a connection
    d.close()
    with pytest.raises(DispatcherClosed):
        d.submit_many([])
    with pytest.raises(DispatcherClosed):
        d.submit_many([PostgresJob("k", ECHO)])


# -- futures ----------------------------------------------------------------------------


def test_batch_futures_resolve_with_results_and_errors(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    pg_worker()
    big = "x" * 20_000  # a result too large to travel in a notification
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=60) as d:
        d.submit("warm-up", ECHO).result(20)  # the listener's first poll is done
        futures = d.submit_many(
            [
                PostgresJob("a", ECHO, 1, (2, 3), side="buy"),
                PostgresJob("a", "tests.postgres.tasks:boom", "no"),
                PostgresJob("b", "tests.postgres.tasks:unserializable"),
                PostgresJob.multi(["a", "b"], "tests.postgres.tasks:context"),
                PostgresJob("c", ECHO, big),
                *[PostgresJob(f"k{n}", ECHO, n) for n in range(40)],
            ]
        )
        assert futures[0].result(20) == {"args": [1, [2, 3]], "kwargs": {"side": "buy"}}
        error = futures[1].exception(20)
        assert isinstance(error, JobFailed)
        assert (error.error_type, error.message, error.job_id) == ("ValueError", "no", futures[1].job_id)
        bad = futures[2].exception(20)
        assert isinstance(bad, JobFailed)
        assert bad.error_type == "TypeError"
        info = futures[3].result(20)
        assert (info["job_id"], info["keys"]) == (futures[3].job_id, ["a", "b"])
        assert futures[4].result(20) == {"args": [big], "kwargs": {}}
        assert [future.result(20)["args"] for future in futures[5:]] == [[n] for n in range(40)]
        assert d.stats().awaiting == 0


def test_plain_tuples_are_jobs_too(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        futures = d.submit_many(
            [("k", ECHO, (1, [2]), {"side": "buy"}), PostgresJob("k", ECHO, 3), (("t", 1), ECHO, [], {})]
        )
        assert [future.result(20) for future in futures] == [
            {"args": [1, [2]], "kwargs": {"side": "buy"}},
            {"args": [3], "kwargs": {}},
            {"args": [], "kwargs": {}},
        ]
        assert sql(pg_dsn, f"SELECT keys FROM {pg_schema}.jobs WHERE id = %s", (futures[2].job_id,)) == [
            (['["t",1]'],)
        ]


def test_a_batch_future_cancels_its_job(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        first, second = d.submit_many([PostgresJob("k", ECHO), PostgresJob("k", ECHO)])
        assert first.cancel()
        with pytest.raises(CancelledError):
            first.result(0)
        assert run_worker(pg_dsn, schema=pg_schema, burst=True, poll_interval=0.1) == 1
        assert second.result(20) == {"args": [], "kwargs": {}}


def test_a_batch_whose_acknowledgement_is_lost_returns_its_jobs(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, lossy_proxy: LossyProxy
) -> None:
    pg_worker()
    with PostgresDispatcher(lossy_proxy.dsn, schema=pg_schema, poll_interval=0.2) as d:
        lossy_proxy.arm(f"{pg_schema}.submit_many(".encode())
        futures = d.submit_many(PostgresJob(f"k{n % 2}", ECHO, n) for n in range(5))
        assert lossy_proxy.cuts == 1  # the commit's answer was lost
        rows = sql(pg_dsn, f"SELECT id FROM {pg_schema}.jobs ORDER BY id")
        assert rows == [(future.job_id,) for future in futures]  # once, not twice
        assert [future.result(20)["args"] for future in futures] == [[n] for n in range(5)]


# -- options ----------------------------------------------------------------------------


@pytest.fixture
def broken() -> Iterator[str]:
    name = f"broken-{uuid.uuid4().hex[:8]}"
    tasks.broken_names.add(name)
    yield name
    tasks.broken_names.discard(name)


def test_options_apply_to_every_job_of_a_batch(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        # Supersede: every job of the batch opts in; each retires the earlier
        # unstarted ones of its key, those of the batch too, and not the job
        # that did not opt in.
        plain = d.submit("s", ECHO, "plain")
        old = d.options(supersede=True).submit("s", ECHO, "old")
        batch = d.options(supersede=True).submit_many(
            [PostgresJob("s", ECHO, "first"), PostgresJob("t", ECHO, "other"), PostgresJob("s", ECHO, "last")]
        )
        assert isinstance(old.exception(20), Superseded)
        assert isinstance(batch[0].exception(20), Superseded)
        # Start timeout: expired in the database (the key is paused meanwhile).
        d.pause("p")
        expiring = d.options(start_timeout=0.05).submit_many([PostgresJob("p", ECHO), PostgresJob("p", ECHO)])
        assert [type(future.exception(20)) for future in expiring] == [StartTimeout, StartTimeout]
        d.resume("p")
        # Retry: the policy is stored with every job.
        retried = d.options(retry=Retry(attempts=3, backoff=0.01, on=(ConnectionError,))).submit_many(
            [PostgresJob("r", BROKEN, broken), PostgresJob("r", ECHO, "after")]
        )
        pg_worker()
        assert plain.result(20)["args"] == ["plain"]
        assert [future.result(20)["args"] for future in batch[1:]] == [["other"], ["last"]]
        error = retried[0].exception(20)
        assert isinstance(error, JobFailed)
        assert error.attempt == 3
        assert retried[1].result(20)["args"] == ["after"]
        assert [letter.job_id for letter in d.dead_letters()] == [retried[0].job_id]


# -- the worker's combined finish and claim ---------------------------------------------


def _listen(dsn: str, channel: str) -> Connection[Any]:
    conn: Connection[Any] = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn


def _notifications(conn: Connection[Any], channel: str) -> list[str]:
    """The payloads on ``channel`` committed so far: read up to a marker sent now."""
    marker = f"marker-{uuid.uuid4().hex}"
    sql(conn.info.dsn, "SELECT pg_notify(%s, %s)", (channel, marker))
    payloads: list[str] = []
    for notify in conn.notifies(timeout=20):
        if notify.payload == marker:
            return payloads
        payloads.append(notify.payload)
    raise AssertionError("the marker never arrived")


def test_finish_claim_fences_stale_attempts_and_claims_in_the_same_transaction(
    pg_dsn: str, pg_schema: str
) -> None:
    s = pg_schema
    finish_claim = f"SELECT id, attempt, func FROM {s}.finish_claim(%s, %s, %s, %s::jsonb[], %s, 30)"
    with PostgresDispatcher(pg_dsn, schema=s, poll_interval=0.1) as d:
        future, later, other = d.submit_many(
            [PostgresJob("k", ECHO), PostgresJob("k", ECHO, "later"), PostgresJob("j", ECHO)]
        )
        assert sql(pg_dsn, f"SELECT id, attempt FROM {s}.claim('zombie', 1, 0.05)") == [(future.job_id, 1)]
        wait_until(lambda: sql(pg_dsn, f"SELECT {s}.recover()")[0][0] == 1)
        assert sql(pg_dsn, f"SELECT id, attempt FROM {s}.claim('rescuer', 1, 30)") == [(future.job_id, 2)]
        # The zombie's result is refused (a row with its id and attempt, no
        # function), and it claims nothing it was not given room for.
        assert sql(pg_dsn, finish_claim, ("zombie", [future.job_id], [1], ['"zombie"'], 0)) == [
            (future.job_id, 1, None)
        ]
        # The rescuer's is recorded, and the claim in the same call takes the
        # job it made runnable and the other key's.
        rows = sql(pg_dsn, finish_claim, ("rescuer", [future.job_id], [2], ['"rescuer"'], 5))
        assert sorted(rows) == [(later.job_id, 1, ECHO), (other.job_id, 1, ECHO)]
        assert future.result(20) == "rescuer"
        # Sent again (a lost acknowledgement): accepted, nothing changes.
        assert sql(pg_dsn, finish_claim, ("rescuer", [future.job_id], [2], ['"rescuer"'], 5)) == []
        assert sql(pg_dsn, finish_claim, ("zombie", [future.job_id], [1], ['"zombie"'], 5)) == [
            (future.job_id, 1, None)
        ]
        # Several at once.
        assert (
            sql(pg_dsn, finish_claim, ("rescuer", [later.job_id, other.job_id], [1, 1], ["1", "2"], 5)) == []
        )
        assert (later.result(20), other.result(20)) == (1, 2)
        assert sql(pg_dsn, f"SELECT count(*) FROM {s}.job_keys") == [(0,)]


def test_finish_claim_wakes_other_workers_only_for_jobs_it_leaves(pg_dsn: str, pg_schema: str) -> None:
    s = pg_schema
    finish_claim = f"SELECT id FROM {s}.finish_claim('w', %s, %s, %s::jsonb[], %s, 30)"
    ready = _listen(pg_dsn, f"{s}_ready")
    results = _listen(pg_dsn, f"{s}_results")
    try:
        with PostgresDispatcher(pg_dsn, schema=s) as d:
            jobs = d.submit_many(PostgresJob("k", ECHO) for _ in range(3))
            ids = [job.job_id for job in jobs]
            assert _notifications(ready, f"{s}_ready") == [""]  # the batch's one runnable job
            assert sql(pg_dsn, f"SELECT id FROM {s}.claim('w', 5, 30)") == [(ids[0],)]
            # It takes the job it made runnable: no one else is woken.
            assert sql(pg_dsn, finish_claim, ([ids[0]], [1], ['{"n": 1}'], 1)) == [(ids[1],)]
            assert _notifications(ready, f"{s}_ready") == []
            token = str(jobs[0]._token)
            assert [json.loads(p) for p in _notifications(results, f"{s}_results")] == [[[token, {"n": 1}]]]
            # No room to take it: the others are woken.
            big = json.dumps("x" * 9000)
            assert sql(pg_dsn, finish_claim, ([ids[1]], [1], [big], 0)) == []
            assert _notifications(ready, f"{s}_ready") == [""]
            # A result too large for a notification travels as the token alone.
            assert [json.loads(p) for p in _notifications(results, f"{s}_results")] == [[str(jobs[1]._token)]]
            assert jobs[1].result(20) == "x" * 9000
    finally:
        ready.close()
        results.close()


def test_a_worker_on_a_queue_of_version_3_finishes_and_claims_apart(pg_dsn: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(
                f"CREATE TABLE {schema}.migrations (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, text in migrations(schema)[:3]:
                conn.execute(text)
                conn.execute(f"INSERT INTO {schema}.migrations (version) VALUES (%s)", (version,))
        with PostgresDispatcher(pg_dsn, schema=schema, poll_interval=0.1) as d:
            futures = [d.submit(f"k{n % 2}", ECHO, n) for n in range(6)]
            assert run_worker(pg_dsn, schema=schema, burst=True, poll_interval=0.1) == 6
            assert [future.result(20)["args"] for future in futures] == [[n] for n in range(6)]
            # Upgraded, the same queue takes batches and workers finish and claim at once.
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                assert install_schema(conn, schema) == 4
            batch = d.submit_many(PostgresJob("k0", ECHO, n) for n in range(3))
            assert run_worker(pg_dsn, schema=schema, burst=True, poll_interval=0.1) == 3
            assert [future.result(20)["args"] for future in batch] == [[0], [1], [2]]
    finally:
        sql(pg_dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
