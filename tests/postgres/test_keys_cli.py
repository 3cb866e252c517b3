"""``python -m keyed_dispatch keys``: an operator's view and controls of a queue's keys."""

# ruff: noqa: S603  # the tests run our own interpreter

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import CancelledError

import pytest

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import webhook_key  # noqa: E402
from keyed_dispatch.postgres import PostgresDispatcher  # noqa: E402
from keyed_dispatch.postgres._keys_cli import main  # noqa: E402

pytestmark = pytest.mark.slow

ECHO = "tests.postgres.tasks:echo"


def run(capsys: pytest.CaptureFixture[str], dsn: str, schema: str, *argv: str) -> tuple[int, str, str]:
    status = main([*argv, "--dsn", dsn, "--schema", schema])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_info_pause_resume_cancel(
    capsys: pytest.CaptureFixture[str], pg_dsn: str, pg_schema: str
) -> None:
    key = webhook_key(1, "BTC/USDT")
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        assert run(capsys, pg_dsn, pg_schema, "list") == (0, "no live keys\n", "")
        futures = [d.submit(key, ECHO) for _ in range(2)] + [d.submit("ETH/USDT", ECHO)]

        status, out, _ = run(capsys, pg_dsn, pg_schema, "list", "--limit", "5")
        assert status == 0
        header, first, second = out.splitlines()
        assert header.split() == ["KEY", "PENDING", "RUNNING", "OLDEST_WAIT_S", "PAUSED", "IN_BACKOFF"]
        assert first.split()[:3] == ['[1,"BTC/USDT"]', "2", "no"]
        assert second.split()[:2] == ['"ETH/USDT"', "1"]

        # A str key as it is; any other key as its JSON text, as the list shows it.
        assert run(capsys, pg_dsn, pg_schema, "pause", "ETH/USDT") == (0, 'paused "ETH/USDT"\n', "")
        assert run(capsys, pg_dsn, pg_schema, "pause", "--json", '"ETH/USDT"')[1] == (
            '"ETH/USDT" was paused already\n'
        )
        assert d.key_info("ETH/USDT").paused
        status, out, _ = run(capsys, pg_dsn, pg_schema, "info", "--json", '[1,"BTC/USDT"]')
        assert status == 0
        lines = dict(line.split(None, 1) for line in out.replace("oldest wait", "oldest_wait").splitlines())
        assert lines["key"] == '[1,"BTC/USDT"]'
        assert (lines["pending"], lines["running"], lines["paused"]) == ("2", "no", "no")
        assert run(capsys, pg_dsn, pg_schema, "resume", "ETH/USDT") == (0, 'resumed "ETH/USDT"\n', "")
        assert run(capsys, pg_dsn, pg_schema, "resume", "ETH/USDT")[1] == '"ETH/USDT" was not paused\n'
        assert run(capsys, pg_dsn, pg_schema, "cancel", "--json", '[1,"BTC/USDT"]') == (
            0,
            'cancelled 2 pending job(s) of [1,"BTC/USDT"]\n',
            "",
        )
        for future in futures[:2]:
            with pytest.raises(CancelledError):
                future.result(20)
        assert not futures[2].done()
        assert d.key_info(key).pending == 0
        assert run(capsys, pg_dsn, pg_schema, "info", "--json", "7")[1].startswith("key            7\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "--json", "[1,"], "is not JSON"),
        (["pause", "--json", '{"a": 1}'], "distributed keys are str, int, float, None or tuples"),
        (["info", "--json", "NaN"], "NaN"),
    ],
)
def test_bad_keys_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], pg_dsn: str, pg_schema: str, argv: list[str], message: str
) -> None:
    status, out, err = run(capsys, pg_dsn, pg_schema, *argv)
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("keyed_dispatch keys: ")
    assert message in line


def test_bad_setup_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    assert main(["list", "--dsn", pg_dsn, "--schema", "kd_missing"]) == 2
    assert "not installed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["pause", "k", "ETH", "--dsn", pg_dsn])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["pause", "k", "--json", "1", "--dsn", pg_dsn])  # a key, or --json: not both
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["list", "--limit", "-1", "--dsn", pg_dsn])
    monkeypatch.delenv("KEYED_DISPATCH_DSN", raising=False)
    with pytest.raises(SystemExit):
        main(["list"])
    assert "--dsn is required" in capsys.readouterr().err


def test_a_pause_from_another_process_holds_the_key_here(pg_dsn: str, pg_schema: str) -> None:
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        command = [sys.executable, "-m", "keyed_dispatch", "keys", "pause", "--json", '[2,"SOL/USDT"]']
        env = {**os.environ, "KEYED_DISPATCH_DSN": pg_dsn}
        done = subprocess.run(
            [*command, "--schema", pg_schema],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, 'paused [2,"SOL/USDT"]\n', "")
        assert d.key_info(webhook_key(2, "SOL/USDT")).paused
