"""The command line front door: ``python -m keyed_dispatch COMMAND``."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Sequence

import pytest

import keyed_dispatch.__main__ as cli


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m keyed_dispatch COMMAND")
    for name in cli.COMMANDS:
        assert f"  {name}" in out


@pytest.mark.parametrize("argv", [[], ["no-such-command"]])
def test_missing_or_unknown_command_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    if argv:
        assert "unknown command: no-such-command" in err


def test_a_command_runs_its_module_main(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Sequence[str]] = []

    def main(argv: Sequence[str]) -> int:
        seen.append(argv)
        return 3

    module = types.ModuleType("kd_test_command")
    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kd_test_command", module)
    monkeypatch.setitem(cli.COMMANDS, "probe", ("kd_test_command", "a test command"))
    assert cli.main(["probe", "--flag", "x"]) == 3
    assert seen == [["--flag", "x"]]


@pytest.mark.slow
def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "keyed_dispatch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "commands:" in proc.stdout


def test_bench_is_not_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    # The benchmark suite runs from the checkout: python -m benchmarks.suite.
    assert "bench" not in cli.COMMANDS
    assert cli.main(["bench"]) == 2
    assert "unknown command: bench" in capsys.readouterr().err


def test_demo_runs_from_the_demo_package() -> None:
    assert cli.COMMANDS["demo"][0] == ".demo._harness"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["worker"], ["keys", "list"]])
def test_postgres_commands_without_psycopg_print_one_line_naming_the_extra(command: list[str]) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; from keyed_dispatch.__main__ import main; "
        f"sys.exit(main({[*command, '--dsn', 'postgresql:///nowhere']!r}))"
    )
    proc = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"python -m keyed_dispatch {command[0]}: keyed_dispatch.postgres needs psycopg 3")
    assert "pip install 'keyed_dispatch[postgres]'" in line
    assert "pip install -e '.[postgres]'" in line
