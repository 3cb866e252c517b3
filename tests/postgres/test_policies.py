"""Key policies in the PostgreSQL mode: retries, dead letters, supersede, pause/resume, cancel_pending."""

# ruff: noqa: S608  # the tests build SQL from test schema names

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError

import pytest

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import KeyInfo, Retry, StartTimeout, Superseded, webhook_key  # noqa: E402
from keyed_dispatch.demo._recording import check_events, create_events_table, read_events  # noqa: E402
from keyed_dispatch.postgres import SCHEMA_VERSION, JobFailed, PostgresDispatcher, key_text, run_worker  # noqa: E402
from keyed_dispatch.postgres._dispatcher import install_schema  # noqa: E402
from keyed_dispatch.postgres._schema import migrations  # noqa: E402
from tests.conftest import WorkerFactory  # noqa: E402
from tests.postgres import tasks  # noqa: E402
from tests.postgres.support import sql, wait_until  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPTED = "tests.postgres.tasks:scripted"
BROKEN = "tests.postgres.tasks:broken"
ECHO = "tests.postgres.tasks:echo"
GATE = "tests.postgres.tasks:gate"
QUICK = Retry(attempts=3, backoff=0.05, jitter=0)


NewGate = Callable[[], str]


@pytest.fixture
def new_gate() -> Iterator[NewGate]:
    """Make gates for the ``gate`` job (``new_gate()`` names one); every one opens at teardown."""
    made: list[str] = []

    def new() -> str:
        name = f"gate-{uuid.uuid4().hex[:8]}"
        tasks.gates[name] = threading.Event()
        tasks.started[name] = threading.Event()
        made.append(name)
        return name

    yield new
    for name in made:
        tasks.gates[name].set()


@pytest.fixture
def broken() -> Iterator[str]:
    """A name that makes the ``broken`` job fail until it leaves ``tasks.broken_names``."""
    name = f"broken-{uuid.uuid4().hex[:8]}"
    tasks.broken_names.add(name)
    yield name
    tasks.broken_names.discard(name)


def _events_kw(dsn: str, schema: str) -> dict[str, str]:
    create_events_table(dsn, schema)
    return {"events_dsn": dsn, "events_schema": schema}


# -- retries ------------------------------------------------------------------------


def test_a_retried_job_keeps_the_head_of_its_keys_and_resolves_once(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    kw = _events_kw(pg_dsn, pg_schema)
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1, retry=QUICK) as d:
        first = d.submit("k", SCRIPTED, ["fail", "fail"], **kw)
        later = d.submit("k", SCRIPTED, [], **kw)
        both = d.submit_multi(["k", "j"], SCRIPTED, [], **kw)
        elsewhere = d.submit("j", SCRIPTED, [], **kw)
        assert first.result(20)["attempt"] == 3
        assert [f.result(20)["attempt"] for f in (later, both, elsewhere)] == [1, 1, 1]
        stats = d.stats()
        assert (stats.completed, stats.failed, stats.in_backoff, stats.queued) == (4, 0, 0, 0)
        assert d.dead_letters() == []
    events = read_events(pg_dsn, pg_schema)
    starts = [e.attempt for e in events if e.job_id == first.job_id and e.phase == "start"]
    assert starts == [1, 2, 3]
    jobs = [
        (first.job_id, ["k"]),
        (later.job_id, ["k"]),
        (both.job_id, ["k", "j"]),
        (elsewhere.job_id, ["j"]),
    ]
    assert check_events(events, [jobs]) == []


def test_exhausted_retries_fail_once_with_the_chain_and_leave_a_dead_letter(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    pg_worker()
    key = webhook_key(1, "BTC/USDT")
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        dead = d.options(retry=QUICK).submit(key, BROKEN, broken)
        after = d.submit(key, ECHO, "after")
        error = dead.exception(20)
        assert isinstance(error, JobFailed)
        assert (error.error_type, error.attempt, error.job_id) == ("ConnectionError", 3, dead.job_id)
        assert error.message == f"{broken} attempt 3"
        second = error.__context__
        assert isinstance(second, JobFailed)
        assert second.attempt == 2
        first = second.__context__
        assert isinstance(first, JobFailed)
        assert (first.attempt, first.message, first.__context__) == (1, f"{broken} attempt 1", None)
        assert after.result(20) == {"args": ["after"], "kwargs": {}}
        [letter] = d.dead_letters()
        assert (letter.job_id, letter.keys, letter.func, letter.args) == (
            dead.job_id,
            (key,),
            BROKEN,
            [broken],
        )
        assert (letter.attempts, letter.error.attempt, letter.error.message) == (3, 3, error.message)
        assert letter.failed_at.tzinfo is not None
        assert d.dead_letters(limit=0) == []

        tasks.broken_names.discard(broken)  # fixed: the requeued job succeeds
        again = d.requeue(dead.job_id)
        assert again.job_id > after.job_id  # at the tail of its keys
        assert again.result(20) == 1  # a new job: its attempts count from 1
        assert d.dead_letters() == []
        with pytest.raises(LookupError, match=f"no dead letter for job {dead.job_id}"):
            d.requeue(dead.job_id)
        with pytest.raises(LookupError, match="no dead letter"):
            d.requeue(10**12)
        with pytest.raises(TypeError, match="job_id"):
            d.requeue("1")  # type: ignore[arg-type]


def test_retry_on_matches_class_names_along_the_mro(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    pg_worker()
    exchange = Retry(attempts=2, backoff=0.01, on=(tasks.ExchangeDown,))
    network = Retry(attempts=2, backoff=0.01, on=(ConnectionError,))
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        own = d.options(retry=exchange).submit("a", BROKEN, broken, "ExchangeDown")
        subclass = d.options(retry=network).submit("b", BROKEN, broken, "ConnectionRefusedError")
        subclass_of_own = d.options(retry=network).submit("c", BROKEN, broken, "ExchangeDown")
        other = d.options(retry=network).submit("d", BROKEN, broken, "ValueError")
        expected = {
            own: ("tests.postgres.tasks.ExchangeDown", 2),
            subclass: ("ConnectionRefusedError", 2),
            subclass_of_own: ("tests.postgres.tasks.ExchangeDown", 2),
            other: ("ValueError", 1),  # not retried
        }
        for future, outcome in expected.items():
            error = future.exception(20)
            assert isinstance(error, JobFailed)
            assert (error.error_type, error.attempt) == outcome
        # Every job with a policy that failed for good, retried or not.
        assert {letter.job_id for letter in d.dead_letters()} == {f.job_id for f in expected}


def test_a_retry_predicate_cannot_cross_processes(pg_dsn: str) -> None:
    predicate = Retry(on=lambda exc: True)
    with pytest.raises(TypeError, match="cannot cross processes"):
        PostgresDispatcher(pg_dsn, retry=predicate)
    with PostgresDispatcher(pg_dsn) as d:
        with pytest.raises(TypeError, match="cannot cross processes"):
            d.options(retry=predicate)
        with pytest.raises(TypeError, match="retry must be a Retry"):
            d.options(retry=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="supersede"):
            d.options(supersede=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="start_timeout"):
            d.options(start_timeout=-1)
    with pytest.raises(TypeError, match="retry must be a Retry"):
        PostgresDispatcher(pg_dsn, retry="yes")  # type: ignore[arg-type]


def test_the_database_refuses_a_malformed_retry_policy(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        params = (uuid.uuid4(), [key_text("k")], ECHO, "[]", "{}", None, '{"attempts": "many"}', False)
        with pytest.raises(psycopg.errors.RaiseException, match="retry policy needs numbers"):
            d._call(d._q.submit, params)
        assert d.stats().queued == 0


def test_no_retry_starts_past_the_policys_deadline(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    pg_worker()
    hasty = Retry(attempts=5, backoff=0.5, jitter=0, deadline=0.1)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1, retry=hasty) as d:
        error = d.submit("k", BROKEN, broken).exception(20)
        assert isinstance(error, JobFailed)
        assert error.attempt == 1


def test_a_job_waiting_for_its_retry_holds_its_keys_and_can_be_cancelled(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    pg_worker()
    patient = Retry(attempts=3, backoff=60, jitter=0)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1, retry=patient) as d:
        waiting = d.submit("k", BROKEN, broken)
        later = d.submit("k", ECHO, "later")
        wait_until(lambda: d.key_info("k").in_backoff)
        info = d.key_info("k")
        assert (info.pending, info.running, info.paused, info.in_backoff) == (1, False, False, True)
        stats = d.stats()
        assert (stats.in_backoff, stats.queued, stats.running) == (1, 2, 0)
        assert not later.done()
        assert waiting.cancel()
        # Notified as a pool's worker would: wait() counts it done.
        assert concurrent.futures.wait([waiting], timeout=0).done == {waiting}
        with pytest.raises(CancelledError):
            waiting.result(1)
        assert later.result(20) == {"args": ["later"], "kwargs": {}}
        assert d.dead_letters() == []  # cancelled, not dead


def test_a_retry_is_not_subject_to_the_start_timeout(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    kw = _events_kw(pg_dsn, pg_schema)
    pg_worker()
    slow_retry = Retry(attempts=2, backoff=0.5, jitter=0)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        # The start deadline (0.4 s) passes during the backoff: the job had started.
        future = d.options(retry=slow_retry, start_timeout=0.4).submit("k", SCRIPTED, ["fail"], **kw)
        assert future.result(20)["attempt"] == 2


def test_a_burst_worker_waits_for_the_retries_it_scheduled(pg_dsn: str, pg_schema: str) -> None:
    kw = _events_kw(pg_dsn, pg_schema)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        future = d.options(retry=QUICK).submit("k", SCRIPTED, ["fail"], **kw)
        # Nothing runnable during the backoff; the worker returns after the retry.
        assert run_worker(pg_dsn, schema=pg_schema, burst=True, poll_interval=5.0) == 2
        assert future.result(20)["attempt"] == 2


# -- per-job start timeouts ------------------------------------------------------------


def test_options_set_one_jobs_start_timeout(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1, start_timeout=60) as d:
        hasty = d.options(start_timeout=0.05).submit("k", ECHO)
        patient = d.options(start_timeout=None).submit("k", ECHO)
        with pytest.raises(StartTimeout, match="start timeout"):
            hasty.result(20)
        rows = sql(pg_dsn, f"SELECT id, deadline FROM {pg_schema}.jobs WHERE id = %s", (patient.job_id,))
        assert rows == [(patient.job_id, None)]
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        # No start timeout of its own: the poll still expires a job that has one.
        future = d.options(start_timeout=0.05).submit("j", ECHO)
        with pytest.raises(StartTimeout):
            future.result(20)


# -- supersede ----------------------------------------------------------------------


def test_supersede_retires_earlier_opted_in_unstarted_jobs_whose_keys_are_a_subset(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, new_gate: NewGate
) -> None:
    pg_worker()
    name = new_gate()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        latest = d.options(supersede=True)
        running = latest.submit("k", GATE, name)
        assert tasks.started[name].wait(20)
        plain = d.submit("k", ECHO, "plain")
        replaced = latest.submit("k", ECHO, "replaced")
        wider = latest.submit_multi(["k", "j"], ECHO, "wider")
        # {k} does not carry j's update: the job on {k, j} stays.
        newest_k = latest.submit("k", ECHO, "newest k")
        assert isinstance(replaced.exception(20), Superseded)
        assert not wider.done()
        newest = latest.submit_multi(["k", "j", "x"], ECHO, "newest")
        for future, keys in ((wider, ("k", "j")), (newest_k, ("k",))):
            error = future.exception(20)
            assert isinstance(error, Superseded)
            assert error.keys == keys
        tasks.gates[name].set()
        assert running.result(20) == name  # a running job is never superseded
        assert plain.result(20)["args"] == ["plain"]  # nor one that did not opt in
        assert newest.result(20)["args"] == ["newest"]
        assert d.stats().superseded == 3
    superseded = {replaced.job_id, wider.job_id, newest_k.job_id}
    rows = sql(
        pg_dsn, f"SELECT id, attempt, state FROM {pg_schema}.jobs WHERE id = ANY(%s)", (list(superseded),)
    )
    assert sorted(rows) == sorted((job_id, 0, "superseded") for job_id in superseded)  # never ran


# -- pause, resume, cancel_pending, key_info, keys ----------------------------------------


def test_a_paused_key_starts_nothing_until_resumed_from_any_dispatcher(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, new_gate: NewGate
) -> None:
    kw = _events_kw(pg_dsn, pg_schema)
    pg_worker()
    name = new_gate()
    with (
        PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d,
        PostgresDispatcher(pg_dsn, schema=pg_schema) as operator,
    ):
        running = d.submit("k", GATE, name)
        assert tasks.started[name].wait(20)
        assert operator.pause("k")
        assert not operator.pause("k")
        held = [d.submit("k", SCRIPTED, [], **kw) for _ in range(2)]
        both = d.submit_multi(["k", "j"], SCRIPTED, [], **kw)
        free = d.submit("free", SCRIPTED, [], **kw)
        tasks.gates[name].set()
        assert running.result(20) == name  # the running job finishes
        assert free.result(20)["attempt"] == 1  # other keys run
        assert sql(pg_dsn, f"SELECT * FROM {pg_schema}.claim('probe', 10, 30)") == []
        info = d.key_info("k")
        assert (info.pending, info.running, info.paused, info.halted, info.in_backoff) == (
            3,
            False,
            True,
            False,
            False,
        )
        assert info.oldest_wait_s > 0
        assert d.keys()[0].key == "k"
        assert d.stats().paused_keys == 1
        assert not any(f.done() for f in [*held, both])
        assert operator.resume("k")
        assert not operator.resume("k")
        assert [f.result(20)["attempt"] for f in [*held, both]] == [1, 1, 1]
        assert d.key_info("k") == KeyInfo("k", 0, False, 0.0, False, False, False)
    events = read_events(pg_dsn, pg_schema)
    jobs = [(f.job_id, ["k"]) for f in held] + [(both.job_id, ["k", "j"])]
    assert check_events(events, [jobs]) == []


def test_a_paused_key_holds_a_retry_and_start_deadlines_still_apply(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, broken: str
) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        waiting = d.options(retry=Retry(attempts=2, backoff=0.2, jitter=0)).submit("k", BROKEN, broken)
        wait_until(lambda: d.key_info("k").in_backoff)
        assert d.pause("k")
        expiring = d.options(start_timeout=0.05).submit("k", ECHO)
        with pytest.raises(StartTimeout):
            expiring.result(20)
        # Past its backoff, the retry waits for the resume: due, so pending.
        wait_until(lambda: not d.key_info("k").in_backoff)
        assert d.key_info("k").pending == 1
        assert sql(pg_dsn, f"SELECT * FROM {pg_schema}.claim('probe', 10, 30)") == []
        [(attempt,)] = sql(pg_dsn, f"SELECT attempt FROM {pg_schema}.jobs WHERE id = %s", (waiting.job_id,))
        assert attempt == 1
        tasks.broken_names.discard(broken)
        assert d.resume("k")
        assert waiting.result(20) == 2


def test_cancel_pending_cancels_every_job_of_a_key_but_the_running_one(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, new_gate: NewGate
) -> None:
    pg_worker()
    name = new_gate()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d:
        running = d.submit("k", GATE, name)
        assert tasks.started[name].wait(20)
        pending = [d.submit("k", ECHO, n) for n in range(2)]
        both = d.submit_multi(["k", "j"], ECHO, "both")
        after_on_j = d.submit("j", ECHO, "j")
        assert d.cancel_pending("k") == 3
        assert d.cancel_pending("k") == 0
        assert d.cancel_pending("nothing here") == 0
        for future in [*pending, both]:
            with pytest.raises(CancelledError):
                future.result(20)
        assert after_on_j.result(20)["args"] == ["j"]  # j moved on
        assert not running.done()
        tasks.gates[name].set()
        assert running.result(20) == name
        assert d.stats().cancelled == 3


def test_key_info_and_keys_read_the_queue(pg_dsn: str, pg_schema: str) -> None:
    tuple_key = webhook_key(7, "ETH/USDT")
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        assert d.key_info("idle") == KeyInfo("idle", 0, False, 0.0, False, False, False)
        assert d.keys() == []
        for _ in range(3):
            d.submit(tuple_key, ECHO)
        d.submit_multi([tuple_key, 5], ECHO)
        d.submit(5, ECHO)
        d.pause("paused, no work")
        wait_until(lambda: d.key_info(tuple_key).oldest_wait_s > 0)
        listed = d.keys()
        assert [(info.key, info.pending, info.paused) for info in listed] == [
            ((7, "ETH/USDT"), 4, False),
            (5, 2, False),
            ("paused, no work", 0, True),
        ]
        assert listed[0].key == tuple_key  # a WebhookKey reads back as the tuple it equals
        assert [info.key for info in d.keys(limit=1)] == [(7, "ETH/USDT")]
        assert d.key_info(5.0).pending == 2  # 5.0 == 5: one key
        with pytest.raises(ValueError, match="limit"):
            d.keys(limit=-1)
        with pytest.raises(TypeError, match="bytes"):
            d.pause(b"k")


# -- the schema upgrade ---------------------------------------------------------------


def test_a_queue_of_version_2_upgrades_and_its_jobs_still_run(pg_dsn: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(
                f"CREATE TABLE {schema}.migrations (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, text in migrations(schema)[:2]:
                conn.execute(text)
                conn.execute(f"INSERT INTO {schema}.migrations (version) VALUES (%s)", (version,))
            # A job queued by a client of version 2, with its submit().
            conn.execute(
                f"SELECT {schema}.submit(%s, %s, %s, '[\"old\"]'::jsonb, '{{}}'::jsonb, NULL)",
                (uuid.uuid4(), [key_text("k")], ECHO),
            )
            assert install_schema(conn, schema) == SCHEMA_VERSION
        with PostgresDispatcher(pg_dsn, schema=schema, poll_interval=0.1) as d:
            new = d.submit("k", ECHO, "new")
            assert d.key_info("k").pending == 2
            assert run_worker(pg_dsn, schema=schema, burst=True, poll_interval=0.1) == 2
            assert new.result(20)["args"] == ["new"]
        rows = sql(pg_dsn, f"SELECT args, state FROM {schema}.jobs ORDER BY id")
        assert rows == [(["old"], "completed"), (["new"], "completed")]
    finally:
        sql(pg_dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
