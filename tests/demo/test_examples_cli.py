"""The examples and the demo run as the docs describe them (real subprocesses)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - idem
        [sys.executable, str(ROOT / "examples" / example), "--port", str(port)],
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
            answer = client.post(f"{url}/webhook", json=WEBHOOK)
            assert answer.status_code == 200, answer.text
            assert answer.json()["webhook"] == "1:17"
            assert len(answer.json()["placed"]) == 2
            assert client.post(f"{url}/webhook", content=b"nope").status_code == 400
            assert client.get(f"{url}/stats").json()["completed"] == 1
            scrape = client.get(f"{url}/metrics").text
            assert 'keyed_dispatch_jobs_total{dispatcher="webhooks",outcome="completed"} 1.0' in scrape
    finally:
        server.terminate()
        server.wait(DEADLINE)
