"""Workers run registered job functions only; database roles with the least grants."""

# ruff: noqa: S608  # the tests build SQL from test schema names

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

import keyed_dispatch.demo._recording  # noqa: E402  # registers the recorded jobs
import keyed_dispatch.postgres  # noqa: E402
from keyed_dispatch.postgres import JobFailed, PostgresDispatcher, PostgresJob, job_function, run_worker  # noqa: E402
from keyed_dispatch.postgres._cli import main as worker_main  # noqa: E402
from keyed_dispatch.postgres._registry import function_name, registered, registered_function  # noqa: E402
from tests.conftest import WorkerFactory  # noqa: E402
from tests.postgres import tasks  # noqa: E402
from tests.postgres.support import sql  # noqa: E402

# -- the registry -------------------------------------------------------------


def test_functions_are_registered_under_their_module_and_name() -> None:
    assert registered_function("tests.postgres.tasks:echo") is tasks.echo
    assert registered_function("tests.postgres.tasks:unregistered") is None
    assert function_name(tasks.unregistered) == "tests.postgres.tasks:unregistered"
    assert "keyed_dispatch.demo._recording:record_webhook" in registered()


def test_registering_by_name_and_what_is_refused() -> None:
    def local() -> str:
        return "local"

    with pytest.raises(ValueError, match=re.escape("job_function(name=...)")):
        job_function(local)  # its qualified name holds <locals>
    assert job_function(name="tests.postgres.named:local")(local) is local
    assert job_function(name="tests.postgres.named:local")(local) is local  # again: the same function
    with pytest.raises(ValueError, match="already registered"):
        job_function(name="tests.postgres.named:local")(tasks.unregistered)
    with pytest.raises(ValueError, match="module:function"):
        job_function(name="no colon")
    with pytest.raises(TypeError, match="callable"):
        job_function(name="tests.postgres.named:x")(42)  # type: ignore[type-var]
    assert registered_function("tests.postgres.named:local") is local


# -- workers -------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_naming_an_unregistered_function_fails_and_its_key_moves_on(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory
) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema, verify_functions=False) as d:
        shell = d.submit("k", "subprocess:getoutput", "id -un")
        other = d.submit("k", "tests.postgres.tasks:unregistered")
        after = d.submit("k", "tests.postgres.tasks:echo", "next")
        for future, name in ((shell, "subprocess:getoutput"), (other, "tests.postgres.tasks:unregistered")):
            error = future.exception(20)
            assert isinstance(error, JobFailed)
            assert error.error_type == "LookupError"
            assert f"job function {name!r} is not registered on this worker" in error.message
        assert after.result(20) == {"args": ["next"], "kwargs": {}}


@pytest.mark.slow
@pytest.mark.parametrize("given", [tasks.unregistered, "tests.postgres.tasks:unregistered"])
def test_a_worker_runs_the_functions_it_is_given(
    pg_dsn: str, pg_schema: str, given: Callable[..., Any] | str
) -> None:
    stop = threading.Event()
    with (
        ThreadPoolExecutor(1) as pool,
        PostgresDispatcher(pg_dsn, schema=pg_schema, verify_functions=False) as d,
    ):
        worker = pool.submit(
            run_worker, pg_dsn, schema=pg_schema, stop=stop, poll_interval=0.2, functions=[given]
        )
        try:
            assert d.submit("k", "tests.postgres.tasks:unregistered").result(20) == "ran"
        finally:
            stop.set()
        assert worker.result(20) == 1


@pytest.mark.slow
def test_the_worker_cli_runs_what_its_imports_register_and_its_functions(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema, verify_functions=False) as d:
        registered_job = d.submit("k", "tests.postgres.tasks:echo", 1)
        given = d.submit("k", "tests.postgres.tasks:unregistered")
        argv = ["--dsn", pg_dsn, "--schema", pg_schema, "--burst", "--log-level", "WARNING"]
        functions = ["--import", "tests.postgres.tasks", "--function", "tests.postgres.tasks:unregistered"]
        assert worker_main([*argv, *functions]) == 0
        assert registered_job.result(20) == {"args": [1], "kwargs": {}}
        assert given.result(20) == "ran"
    assert worker_main([*argv, "--function", "tests.postgres.tasks:NOT_CALLABLE"]) == 2


# -- submitters -------------------------------------------------------------------


def test_a_submitter_refuses_what_workers_would_refuse(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        with pytest.raises(LookupError, match="not registered"):
            d.submit("k", "tests.postgres.tasks:unregistered")
        with pytest.raises(LookupError, match="not registered"):
            d.submit("k", "subprocess:getoutput", "id -un")
    with PostgresDispatcher(pg_dsn, schema=pg_schema, functions=[tasks.echo, "myapp.tasks:place"]) as d:
        with pytest.raises(LookupError, match="not one of the functions given"):
            d.submit("k", "tests.postgres.tasks:boom", "x")
        d.submit("k", "tests.postgres.tasks:echo")
        d.submit("k", "myapp.tasks:place")  # not imported: the workers have it
        assert d.stats().queued == 2


# -- database roles -----------------------------------------------------------


@pytest.fixture
def roles(pg_dsn: str) -> Iterator[dict[str, str]]:
    """An owner, a submitter and a worker role (LOGIN, no other rights); dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"kd_{role}_{suffix}" for role in ("owner", "submitter", "worker")}
    for name in names.values():
        sql(pg_dsn, f"CREATE ROLE {name} LOGIN")
    sql(pg_dsn, f"GRANT CREATE ON DATABASE postgres TO {names['owner']}")
    yield names
    for name in names.values():
        sql(pg_dsn, f"DROP OWNED BY {name} CASCADE")
        sql(pg_dsn, f"DROP ROLE {name}")


def _grants(schema: str, roles: dict[str, str]) -> str:
    """The grants of the package docs, for ``schema`` and ``roles``."""
    doc = keyed_dispatch.postgres.__doc__ or ""
    block = doc[doc.index("    GRANT USAGE") : doc.index("Neither role")]
    text = block.replace("keyed_dispatch.", f"{schema}.").replace("SCHEMA keyed_dispatch", f"SCHEMA {schema}")
    return text.replace("kd_submitter", roles["submitter"]).replace("kd_worker", roles["worker"])


@pytest.mark.slow
def test_the_documented_grants_are_enough_and_no_more(pg_dsn: str, roles: dict[str, str]) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    as_role = {role: psycopg.conninfo.make_conninfo(pg_dsn, user=name) for role, name in roles.items()}
    with PostgresDispatcher(as_role["owner"], schema=schema) as owner:
        owner.install_schema()
    sql(as_role["owner"], _grants(schema, roles))
    stop = threading.Event()
    with (
        ThreadPoolExecutor(1) as pool,
        PostgresDispatcher(as_role["submitter"], schema=schema, start_timeout=60, poll_interval=0.2) as d,
    ):
        cancelled = d.submit("k", "tests.postgres.tasks:echo", 0)
        assert cancelled.cancel()
        worker = pool.submit(run_worker, as_role["worker"], schema=schema, stop=stop, poll_interval=0.2)
        try:
            done = d.submit("k", "tests.postgres.tasks:echo", 1)
            [batched] = d.submit_many([PostgresJob("k", "tests.postgres.tasks:echo", 2)])
            assert done.result(20) == {"args": [1], "kwargs": {}}
            assert batched.result(20) == {"args": [2], "kwargs": {}}
            assert (d.stats().completed, d.stats().cancelled) == (2, 1)
        finally:
            stop.set()
        assert worker.result(20) == 2
    for role, statement in [
        ("submitter", f"SELECT * FROM {schema}.claim('me', 1, 30)"),
        ("submitter", f"SELECT * FROM {schema}.finish_claim('me', '{{}}', '{{}}', '{{}}', 1, 30)"),
        ("worker", f"SELECT * FROM {schema}.submit_many('[]', NULL, NULL, false)"),
        ("submitter", f"UPDATE {schema}.jobs SET state = 'completed'"),
        ("submitter", f"DELETE FROM {schema}.job_keys"),
        ("worker", f"SELECT * FROM {schema}.jobs"),
        ("worker", f"SELECT {schema}.cancel(1)"),
        ("worker", f"SELECT {schema}._lock_keys(ARRAY['k'])"),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(as_role[role], statement)
    assert re.search(r"GRANT SELECT ON \S+\.migrations TO kd_worker", keyed_dispatch.postgres.__doc__ or "")
