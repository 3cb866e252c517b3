"""The examples and the demo run as the docs describe them (real subprocesses)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.recipes import block_containing, curls, exports

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
WEBHOOK = {
    "strategy_id": 1,
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "seq": 17,
    "orders": [{"type": "CANCEL_ALL"}, {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_python_m_keyed_dispatch_demo_json() -> None:
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "keyed_dispatch",
            "demo",
            *("--webhooks", "16", "--keys", "2", "--latency-ms", "1", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    modes = [row["mode"] for row in json.loads(done.stdout)["results"]]
    assert modes == ["unsafe", "locks", "keyed"]
    assert "keyed: done in" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("example", ["flask_webhooks.py", "fastapi_webhooks.py"])
def test_server_example_runs_as_documented(example: str) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("flask")
    pytest.importorskip("uvicorn")
    recipe = block_containing(ROOT / "docs" / "demo.md", "python examples/flask_webhooks.py --port 8000 &")
    assert f"python examples/{example} --port 8000 &" in recipe
    env = exports(recipe)
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - idem
        [sys.executable, str(ROOT / "examples" / example), "--port", str(port)],
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
                    assert server.poll() is None, f"{example} exited with {server.returncode}"
                    assert time.monotonic() < deadline, f"{example} did not start"
                    time.sleep(0.05)  # a polling interval, not a synchronization
            assert stats.json()["submitted"] == 0
            answers = {}
            for call in curls(recipe, env):
                response = call.send(client, url)
                assert response.status_code == 200, (call, response.text)
                answers[f"{call.method} {call.path}"] = response.json()
            check_documented_answers(answers)
            # Without the documented credentials, nothing passes.
            assert client.post(f"{url}/webhook", json=WEBHOOK).status_code == 401
            assert client.get(f"{url}/admin/keys").status_code == 401
            secret = {"X-Webhook-Secret": env["KEYED_DISPATCH_WEBHOOK_SECRET"]}
            assert client.post(f"{url}/webhook", content=b"nope", headers=secret).status_code == 400
            assert client.get(f"{url}/stats").json()["submitted"] == 1
            scrape = client.get(f"{url}/metrics").text
            assert 'keyed_dispatch_jobs_total{dispatcher="webhooks",outcome="completed"} 1.0' in scrape
    finally:
        server.terminate()
        server.wait(DEADLINE)


def check_documented_answers(answers: dict[str, Any]) -> None:
    """What each documented curl command answered, in the documented order."""
    key = "/admin/keys/1/BTC/USDT"
    assert list(answers) == [
        "POST /webhook",
        "GET /stats",
        f"GET {key}",
        f"POST {key}/pause",
        "GET /admin/keys",
        f"POST {key}/cancel",
        f"POST {key}/resume",
    ]
    webhook = answers["POST /webhook"]
    assert webhook["webhook"] == "1:17"
    assert len(webhook["placed"]) == 2  # one LIMIT order per symbol
    assert answers["GET /stats"]["completed"] == 1
    assert answers[f"GET {key}"]["pending"] == 0
    assert answers[f"POST {key}/pause"]["paused"] is True
    [listed] = answers["GET /admin/keys"]["keys"]
    assert (listed["key"], listed["paused"]) == ("strategy_1_symbol_BTC/USDT", True)
    assert answers[f"POST {key}/cancel"]["cancelled"] == 0
    assert answers[f"POST {key}/resume"]["resumed"] is True
