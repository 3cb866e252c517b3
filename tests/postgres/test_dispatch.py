"""PostgresDispatcher against a real server, with in-process workers."""

# ruff: noqa: S603, S608  # the tests run our own interpreter and build SQL from test schema names

from __future__ import annotations

import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import DispatcherClosed, StartTimeout, SubmitTimeout, webhook_key  # noqa: E402
from keyed_dispatch.demo._recording import check_events, create_events_table, read_events, submit_burst  # noqa: E402
from keyed_dispatch.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    DatabaseUnavailable,
    EmbeddedPostgres,
    JobFailed,
    PostgresDispatcher,
    current_job,
    key_text,
    run_worker,
)
from keyed_dispatch.postgres._cli import main as worker_main  # noqa: E402
from keyed_dispatch.postgres._schema import check_schema_name, lock_class  # noqa: E402
from tests.conftest import WorkerFactory  # noqa: E402
from tests.postgres import tasks  # noqa: E402
from tests.postgres.support import LossyProxy, durable, sql, wait_until  # noqa: E402

pytestmark = pytest.mark.slow

RECORD = "keyed_dispatch.demo._recording:record_webhook"


# -- no database ------------------------------------------------------------


def test_schema_names_are_plain_identifiers() -> None:
    assert check_schema_name("keyed_dispatch") == "keyed_dispatch"
    for bad in ("", "Bad", "a-b", "x; drop table t", "a" * 41):
        with pytest.raises(ValueError, match="schema"):
            check_schema_name(bad)
    assert lock_class("a") != lock_class("b")


def test_current_job_outside_a_job_raises() -> None:
    with pytest.raises(RuntimeError, match="outside a job"):
        current_job()


def test_core_does_not_import_psycopg_and_missing_psycopg_names_the_extra() -> None:
    code = "import sys, keyed_dispatch; assert 'psycopg' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys; sys.modules['psycopg'] = None; import keyed_dispatch.postgres"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "pip install 'keyed_dispatch[postgres]'" in done.stderr


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="submit_timeout"):
        PostgresDispatcher("", submit_timeout=-1)
    with pytest.raises(ValueError, match="start_timeout"):
        PostgresDispatcher("", start_timeout=math.nan)
    with pytest.raises(ValueError, match="poll_interval"):
        PostgresDispatcher("", poll_interval=0)
    with pytest.raises(TypeError, match="dsn"):
        PostgresDispatcher(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        run_worker("", concurrency=0)
    with pytest.raises(ValueError, match="lease"):
        run_worker("", lease=0)


# -- schema -----------------------------------------------------------------


def test_install_schema_is_idempotent_and_versioned(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(d.install_schema())) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [SCHEMA_VERSION] * 3
        assert d.stats().schema_version == SCHEMA_VERSION
    rows = sql(pg_dsn, f"SELECT version FROM {pg_schema}.migrations ORDER BY version")
    assert rows == [(version,) for version in range(1, SCHEMA_VERSION + 1)]
    sql(pg_dsn, f"INSERT INTO {pg_schema}.migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d, pytest.raises(RuntimeError, match="newer"):
        d.install_schema()


def test_a_missing_schema_is_named_at_submit(pg_dsn: str) -> None:
    with PostgresDispatcher(pg_dsn, schema="kd_missing") as d:
        with pytest.raises(RuntimeError, match="not installed"):
            d.submit("k", "tests.postgres.tasks:echo")
        with pytest.raises(RuntimeError, match="install_schema"):
            d.stats()


def test_worker_refuses_a_missing_schema(pg_dsn: str) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        run_worker(pg_dsn, schema="kd_missing", burst=True)
    assert worker_main(["--dsn", pg_dsn, "--schema", "kd_missing", "--burst"]) == 2


def test_the_database_itself_forbids_two_running_jobs_on_a_key(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        first = d.submit("k", "tests.postgres.tasks:echo")
        second = d.submit("k", "tests.postgres.tasks:echo")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(pg_dsn, f"UPDATE {pg_schema}.jobs SET state = 'running' WHERE id = %s", (second.job_id,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql(pg_dsn, f"UPDATE {pg_schema}.job_keys SET running = true WHERE key = %s", (key_text("k"),))
    assert first.job_id < second.job_id


# -- submit, run, results ---------------------------------------------------


def test_results_and_errors_reach_the_future(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyed_dispatch")
    pg_worker(wait_warning=None)
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        ok = d.submit(webhook_key(1, "BTC/USDT"), "tests.postgres.tasks:echo", 1, (2, 3), side="buy")
        failed = d.submit("k", "tests.postgres.tasks:boom", "exchange said no")
        bad_result = d.submit("k", "tests.postgres.tasks:unserializable")
        context = d.submit_multi(["a", "b", "a"], "tests.postgres.tasks:context")
        assert ok.result(20) == {"args": [1, [2, 3]], "kwargs": {"side": "buy"}}
        error = failed.exception(20)
        assert isinstance(error, JobFailed)
        assert (error.error_type, error.message) == ("ValueError", "exchange said no")
        assert "ValueError: exchange said no" in str(error)
        bad = bad_result.exception(20)
        assert isinstance(bad, JobFailed)
        assert bad.error_type == "TypeError"
        assert "JSON" in bad.message
        info = context.result(20)
        assert info["keys"] == ["a", "b"]
        assert info["attempt"] == 1
        assert info["token"] == f"{context.job_id}.1"
        assert info["idempotency_key"] == f"kd-{context.job_id}"
        wait_until(lambda: d.stats().completed == 2)
        stats = d.stats()
        assert (stats.completed, stats.failed, stats.queued, stats.running, stats.awaiting) == (2, 2, 0, 0, 0)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"submitted job {ok.job_id} on strategy_1_symbol_BTC/USDT") for m in messages)
    assert any(
        # The worker reads the key back as the tuple it equals.
        m.startswith(f"started job {ok.job_id} for (1, 'BTC/USDT') (waited")
        for m in messages
    )


def test_a_long_wait_is_logged_at_warning(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        future = d.submit(webhook_key(2, "ETH/USDT"), "tests.postgres.tasks:echo")
        pg_worker(wait_warning=0.0)
        future.result(20)
    assert any(
        record.levelno == logging.WARNING and record.getMessage().startswith("job for (2, 'ETH/USDT') waited")
        for record in caplog.records
    )


def test_futures_follow_changes_made_elsewhere(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1, max_connections=1) as d:
        cancelled = d.submit("k", "tests.postgres.tasks:echo")
        pruned = d.submit("j", "tests.postgres.tasks:echo")
        assert sql(pg_dsn, f"SELECT {pg_schema}.cancel(%s)", (cancelled.job_id,)) == [(True,)]
        with pytest.raises(CancelledError):
            cancelled.result(20)
        sql(pg_dsn, f"DELETE FROM {pg_schema}.jobs WHERE id = %s", (pruned.job_id,))
        error = pruned.exception(20)
        assert isinstance(error, JobFailed)
        assert error.error_type == "JobLost"
        # Submits from many threads share the (here: one) idle connection.
        threads = [
            threading.Thread(target=d.submit, args=("k", "tests.postgres.tasks:echo")) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert d.stats().queued == 4


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "error", "match"),
    [
        ("tests.postgres.tasks:echo", (object(),), {}, TypeError, "JSON-serializable"),
        ("tests.postgres.tasks:echo", (math.nan,), {}, TypeError, "JSON-serializable"),
        ("tests.postgres.tasks:echo", (), {"when": time}, TypeError, "JSON-serializable"),
        ("tasks.echo", (), {}, ValueError, "module:function"),
        ("tests.postgres.tasks:missing", (), {}, ImportError, "no attribute"),
        ("no_such_module_kd:run", (), {}, ImportError, "cannot import"),
        ("tests.postgres.tasks:NOT_CALLABLE", (), {}, TypeError, "not callable"),
    ],
)
def test_bad_jobs_are_refused_at_submit_and_nothing_is_written(
    *,
    pg_dsn: str,
    pg_schema: str,
    func: str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        with pytest.raises(error, match=match):
            d.submit("k", func, *args, **kwargs)
        with pytest.raises(TypeError, match="text"):
            d.submit("k", tasks.echo)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least one key"):
            d.submit_multi([], "tests.postgres.tasks:echo")
        with pytest.raises(TypeError, match="bytes"):
            d.submit(b"k", "tests.postgres.tasks:echo")
        assert d.stats().queued == 0


def test_results_arrive_by_notification(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    pg_worker()
    # The fallback poll runs when the listener starts, then not for 60 s.
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=60) as d:
        d.submit("k", "tests.postgres.tasks:echo").result(20)
        for n in range(20):
            assert d.submit(f"k{n}", "tests.postgres.tasks:echo", n).result(20)["args"] == [n]


def test_a_function_workers_do_not_have_fails_its_job_and_the_key_moves_on(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, verify_functions=False) as d:
        lost = d.submit("k", "no_such_module_kd:run")
        after = d.submit("k", "tests.postgres.tasks:echo", "next")
        error = lost.exception(20)
        assert isinstance(error, JobFailed)
        assert error.error_type == "LookupError"
        assert "'no_such_module_kd:run' is not registered on this worker" in error.message
        assert after.result(20) == {"args": ["next"], "kwargs": {}}


def test_order_and_exclusion_with_multi_key_jobs(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    create_events_table(pg_dsn, pg_schema)
    pg_worker(concurrency=4)
    pg_worker(concurrency=4)
    submissions: list[list[tuple[int, list[str]]]] = [[], []]

    def submitter(number: int) -> None:
        submissions[number] = submit_burst(
            dsn=pg_dsn,
            schema=pg_schema,
            submitter=number,
            count=40,
            keys=4,
            seed=number,
            work_s=0.001,
            multi=0.3,
        )

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert any(len(keys) == 2 for jobs in submissions for _, keys in jobs)
    events = read_events(pg_dsn, pg_schema)
    assert len(events) == 160
    assert check_events(events, submissions) == []


def test_check_events_reports_violations() -> None:
    from keyed_dispatch.demo._recording import Event

    events = [
        Event(1, 10, 1, ("k",), "start", 1),
        Event(2, 11, 1, ("k",), "start", 1),
        Event(3, 10, 1, ("k",), "end", 1),
        Event(4, 11, 1, ("k",), "end", 1),
    ]
    problems = check_events(events, [[(11, ["k"]), (10, ["k"]), (12, ["k"])]])
    assert any("started" in p and "before job 10 ended" in p for p in problems)
    assert any("smaller id" in p for p in problems)
    assert any("job 12" in p and "never completed" in p for p in problems)


# -- timeouts, cancel, close --------------------------------------------------


def test_start_timeout_expires_in_the_database_while_the_key_is_busy(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    pg_worker()
    name = f"busy-{pg_schema}"
    tasks.gates[name] = threading.Event()
    tasks.started[name] = threading.Event()
    with (
        PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.1) as d,
        PostgresDispatcher(pg_dsn, schema=pg_schema, start_timeout=0.2, poll_interval=0.1) as hasty,
    ):
        blocker = d.submit("k", "tests.postgres.tasks:gate", name)
        assert tasks.started[name].wait(20)
        stale = hasty.submit("k", "tests.postgres.tasks:context")
        with pytest.raises(StartTimeout, match="start timeout"):
            stale.result(20)
        assert not blocker.done()
        later = d.submit("k", "tests.postgres.tasks:context")
        tasks.gates[name].set()
        assert blocker.result(20) == name
        assert later.result(20)["job_id"] == later.job_id
        assert d.stats().expired == 1


def test_expiry_needs_no_worker(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, start_timeout=0.05, poll_interval=0.1) as d:
        future = d.submit("k", "tests.postgres.tasks:echo")
        with pytest.raises(StartTimeout):
            future.result(20)


def test_cancel_a_queued_job_and_not_a_running_one(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    name = f"cancel-{pg_schema}"
    tasks.gates[name] = threading.Event()
    tasks.started[name] = threading.Event()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        running = d.submit("k", "tests.postgres.tasks:gate", name)
        queued = d.submit("k", "tests.postgres.tasks:echo", "never")
        after = d.submit("k", "tests.postgres.tasks:echo", "after")
        pg_worker()
        assert tasks.started[name].wait(20)
        assert queued.cancel()
        assert queued.cancel()  # idempotent
        assert queued.cancelled()
        with pytest.raises(CancelledError):
            queued.result(1)
        assert not running.cancel()
        tasks.gates[name].set()
        assert running.result(20) == name
        assert after.result(20) == {"args": ["after"], "kwargs": {}}
        assert not running.cancel()
        assert d.stats().cancelled == 1


def test_stats_show_backlog_and_oldest_wait(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        for _ in range(3):
            d.submit("hot", "tests.postgres.tasks:echo")
        d.submit_multi(["hot", "cold"], "tests.postgres.tasks:echo")
        wait_until(lambda: d.stats().oldest_wait_s > 0)
        stats = d.stats()
        assert stats.queued == 4
        assert stats.hottest_keys == (("hot", 4), ("cold", 1))
        assert stats.awaiting == 4
        assert stats.as_dict()["queued"] == 4


def test_close_fails_pending_futures_and_refuses_submits(pg_dsn: str, pg_schema: str) -> None:
    d = PostgresDispatcher(pg_dsn, schema=pg_schema)
    future = d.submit("k", "tests.postgres.tasks:echo")
    d.close()
    d.close()
    with pytest.raises(DispatcherClosed, match="still in the queue"):
        future.result(1)
    with pytest.raises(DispatcherClosed):
        d.submit("k", "tests.postgres.tasks:echo")
    with pytest.raises(DispatcherClosed):
        d.install_schema()


# -- the database misbehaving -------------------------------------------------


def test_bad_dsn_gives_a_clear_error() -> None:
    with PostgresDispatcher("host=127.0.0.1 port=1 user=nobody password=secret", submit_timeout=5) as d:
        with pytest.raises(DatabaseUnavailable, match="cannot connect") as caught:
            d.submit("k", "tests.postgres.tasks:echo")
        assert "secret" not in str(caught.value)
        with pytest.raises(DatabaseUnavailable):
            d.install_schema()
    assert worker_main(["--dsn", "host=127.0.0.1 port=1", "--burst"]) == 2


def test_submit_timeout_bounds_a_submit_stuck_on_a_locked_key(pg_dsn: str, pg_schema: str) -> None:
    with psycopg.connect(pg_dsn) as holder:
        # Another transaction holds key "k" (as a very slow submit would).
        holder.execute(f"SELECT {pg_schema}._lock_keys(%s)", ([key_text("k")],))
        with PostgresDispatcher(pg_dsn, schema=pg_schema, submit_timeout=0.3) as d:
            with pytest.raises(SubmitTimeout, match="submit_timeout"):
                d.submit("k", "tests.postgres.tasks:echo")
            holder.rollback()
            assert d.stats().queued == 0
            assert d.submit("k", "tests.postgres.tasks:echo").job_id > 0


def test_dropped_connections_lose_nothing(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    create_events_table(pg_dsn, pg_schema)
    pg_worker(concurrency=2)
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2) as d:
        futures = [
            d.submit(f"k{seq % 3}", RECORD, 0, seq, events_dsn=pg_dsn, events_schema=pg_schema, work_s=0.002)
            for seq in range(30)
        ]
        wait_until(lambda: len(read_events(pg_dsn, pg_schema)) >= 10)
        killed = sql(
            pg_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'keyed_dispatch%%' AND pid <> pg_backend_pid()",
        )
        assert len(killed) >= 3  # worker, its listener, the result listener (and idle submit connections)
        futures += [
            d.submit(f"k{seq % 3}", RECORD, 0, seq, events_dsn=pg_dsn, events_schema=pg_schema)
            for seq in range(30, 40)
        ]
        for future in futures:
            future.result(30)
    events = read_events(pg_dsn, pg_schema)
    submissions = [[(future.job_id, [f"k{seq % 3}"]) for seq, future in enumerate(futures)]]
    assert check_events(events, submissions) == []


def test_a_zombies_late_result_is_rejected(pg_dsn: str, pg_schema: str) -> None:
    """Fencing, step by step through the SQL functions a worker calls."""
    s = pg_schema
    with PostgresDispatcher(pg_dsn, schema=s, poll_interval=0.1) as d:
        future = d.submit("k", "tests.postgres.tasks:echo")
        later = d.submit("k", "tests.postgres.tasks:echo")
        claimed = sql(pg_dsn, f"SELECT id, attempt FROM {s}.claim('zombie', 10, 0.05)")
        assert claimed == [(future.job_id, 1)]
        wait_until(lambda: sql(pg_dsn, f"SELECT {s}.recover()")[0][0] == 1)
        # The job is queued again, still ahead of the later job of its key.
        again = sql(pg_dsn, f"SELECT id, attempt FROM {s}.claim('rescuer', 10, 30)")
        assert again == [(future.job_id, 2)]
        assert sql(pg_dsn, f"SELECT {s}.heartbeat('zombie', %s, %s, 30)", ([future.job_id], [1])) == []
        finish = f"SELECT {s}.finish(%s, %s, %s, %s::jsonb, NULL, NULL)"
        assert sql(pg_dsn, finish, (future.job_id, 1, "completed", '"zombie"')) == [(False,)]
        assert sql(pg_dsn, finish, (future.job_id, 2, "completed", '"rescuer"')) == [(True,)]
        # A retried finish of the same attempt (lost acknowledgement) is accepted once more.
        assert sql(pg_dsn, finish, (future.job_id, 2, "completed", '"rescuer"')) == [(True,)]
        assert sql(pg_dsn, finish, (future.job_id, 1, "completed", '"zombie"')) == [(False,)]
        assert future.result(20) == "rescuer"
        assert sql(pg_dsn, f"SELECT id FROM {s}.claim('rescuer', 10, 30)") == [(later.job_id,)]


def test_prune_removes_finished_rows_after_retention(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        futures = [d.submit("k", "tests.postgres.tasks:echo", n) for n in range(5)]
        stop = pg_worker(retention=3600)
        for future in futures:
            future.result(20)
        assert d.stats().completed == 5
        stop.set()
        pg_worker(retention=0.001)
        wait_until(lambda: d.stats().completed == 0)


def test_worker_cli_in_burst_mode(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        futures = [d.submit(f"k{n % 2}", "tests.postgres.tasks:echo", n) for n in range(6)]
        argv = [
            "--dsn",
            pg_dsn,
            "--schema",
            pg_schema,
            "--burst",
            "--concurrency",
            "2",
            "--import",
            "tests.postgres.tasks",
        ]
        assert worker_main([*argv, "--install-schema", "--log-level", "WARNING"]) == 0
        assert [future.result(20)["args"] for future in futures] == [[n] for n in range(6)]


def test_worker_cli_requires_a_dsn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KEYED_DISPATCH_DSN", raising=False)
    with pytest.raises(SystemExit):
        worker_main([])
    assert "--dsn is required" in capsys.readouterr().err


def test_dispatcher_survives_fork(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        assert d.submit("k", "tests.postgres.tasks:echo", "parent").result(20)["args"] == ["parent"]
        read, write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork with threads running: that is the
            # gunicorn --preload situation this test is about.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover  # the child reports through its exit status
            status = 1
            try:
                echoed = d.submit("k", "tests.postgres.tasks:echo", "child").result(20)["args"]
                status = 0 if echoed == ["child"] else 3
            finally:
                os.write(write, bytes([status]))
                os._exit(status)
        os.close(write)
        assert os.read(read, 1) == b"\x00"
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        assert d.submit("k", "tests.postgres.tasks:echo", "parent again").result(20)["args"] == [
            "parent again"
        ]


# -- jobs that raise what a worker must survive -------------------------------


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_a_job_raising_a_base_exception_fails_and_the_worker_carries_on(
    pg_dsn: str, pg_schema: str, name: str
) -> None:
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        worker = pool.submit(run_worker, pg_dsn, schema=pg_schema, stop=stop, poll_interval=0.2)
        with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2) as d:
            failed = d.submit("k", "tests.postgres.tasks:raise_builtin", name)
            after = d.submit("k", "tests.postgres.tasks:echo", "after")
            error = failed.exception(20)
            assert isinstance(error, JobFailed)
            assert error.error_type == name
            assert after.result(20) == {"args": ["after"], "kwargs": {}}
        stop.set()
        assert worker.result(20) == 2  # it stops when asked, having recorded both


def test_results_and_errors_postgres_cannot_store_fail_their_job(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        result = d.submit("k", "tests.postgres.tasks:nul_result").exception(20)
        assert isinstance(result, JobFailed)
        assert result.error_type == "ValueError"
        assert "NUL" in result.message
        error = d.submit("k", "tests.postgres.tasks:nul_error").exception(20)
        assert isinstance(error, JobFailed)
        assert error.message == "a\\x00b\\ud800c"  # escaped, not lost
        assert d.submit("k", "tests.postgres.tasks:echo", 1).result(20) == {"args": [1], "kwargs": {}}


# -- what the database refuses ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("a\x00b",), {}, "job arguments cannot hold a NUL"),
        ((), {"k\x00": 1}, "keyword arguments cannot hold a NUL"),
        (([["\x00"]],), {}, "NUL"),
        (("a\ud800",), {}, "surrogate"),
    ],
)
def test_arguments_postgres_cannot_store_are_refused_at_submit(
    pg_dsn: str, pg_schema: str, args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        with pytest.raises(ValueError, match=match):
            d.submit("k", "tests.postgres.tasks:echo", *args, **kwargs)
        with pytest.raises(ValueError, match="more than the 1024"):
            d.submit("x" * 2000, "tests.postgres.tasks:echo")
        # An escaped backslash before "u0000" is no NUL: accepted.
        assert d.submit("k", "tests.postgres.tasks:echo", "\\u0000").job_id > 0
        assert d.stats().queued == 1


def test_a_key_may_hold_a_nul(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        assert d.submit("a\x00b", "tests.postgres.tasks:echo", 1).result(20) == {"args": [1], "kwargs": {}}
    assert sql(pg_dsn, f"SELECT keys FROM {pg_schema}.jobs") == [(['"a\\u0000b"'],)]


def test_a_refusal_by_the_database_is_raised_as_it_is_and_not_retried(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, max_connections=1) as d:
        d.stats()  # one pooled connection
        # Past the key check: what the database says of a key too long for its index.
        huge_key = secrets.token_hex(5000)
        params = (uuid.uuid4(), [huge_key], "tests.postgres.tasks:echo", "[]", "{}", None, None, False)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="index row"):
            d._call(d._q.submit, params)
        assert len(d._idle) == 1  # the connection is fine: kept, not replaced
        assert d.stats().queued == 0


# -- lost connections, lost acknowledgements, a crashed server ---------------


@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_a_submit_whose_acknowledgement_is_lost_returns_its_job(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, lossy_proxy: LossyProxy, *, pooled: bool
) -> None:
    pg_worker()
    with PostgresDispatcher(lossy_proxy.dsn, schema=pg_schema, poll_interval=0.2) as d:
        if pooled:
            d.stats()
        lossy_proxy.arm(f"{pg_schema}.submit(".encode())
        future = d.submit("k", "tests.postgres.tasks:echo", "once")
        assert lossy_proxy.cuts == 1  # the commit's answer was lost
        assert sql(pg_dsn, f"SELECT id FROM {pg_schema}.jobs") == [(future.job_id,)]  # one job, not two
        assert future.result(20) == {"args": ["once"], "kwargs": {}}


def test_a_submit_that_loses_new_connections_twice_raises_and_may_have_queued_its_job(
    pg_dsn: str, pg_schema: str, lossy_proxy: LossyProxy
) -> None:
    with PostgresDispatcher(lossy_proxy.dsn, schema=pg_schema) as d:
        lossy_proxy.arm(f"{pg_schema}.submit(".encode(), times=2)
        with pytest.raises(DatabaseUnavailable, match="twice"):
            d.submit("k", "tests.postgres.tasks:echo")
        assert lossy_proxy.cuts == 2
        # As documented: the job was queued, once (the retry found it by its token).
        assert len(sql(pg_dsn, f"SELECT id FROM {pg_schema}.jobs")) == 1
        assert d.stats().awaiting == 0


def test_acknowledged_jobs_survive_a_server_crash(crash_server: EmbeddedPostgres) -> None:
    # A production server commits durably (synchronous_commit=on); the
    # embedded one does not by default, and would lose these jobs.
    dsn = durable(crash_server.dsn)
    with PostgresDispatcher(dsn, schema="kd_crash", poll_interval=0.2) as d:
        d.install_schema()
        futures = [d.submit(f"k{n % 3}", "tests.postgres.tasks:echo", n) for n in range(12)]
        crash_server.restart(crash=True)
        # The pooled connections are dead: replaced, the submit goes through.
        futures.append(d.submit("k0", "tests.postgres.tasks:echo", 12))
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            worker = pool.submit(run_worker, dsn, schema="kd_crash", stop=stop, poll_interval=0.2)
            try:
                assert [future.result(30)["args"] for future in futures] == [[n] for n in range(13)]
            finally:
                stop.set()
            assert worker.result(30) == 13
