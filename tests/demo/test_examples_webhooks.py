"""The webhook server examples, served for real on 127.0.0.1.

Each test starts ``examples/flask_webhooks.py`` (werkzeug's threaded server
in a thread) or ``examples/fastapi_webhooks.py`` (uvicorn in a thread) on an
ephemeral port and talks HTTP to it from many client threads.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher  # noqa: E402
from keyed_dispatch.demo import FakeExchange, OrderStore, WebhookHandler, audit, parse_webhook  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEADLINE = 30.0


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    url: str
    exchange: FakeExchange
    store: OrderStore
    handler: WebhookHandler
    client: Any
    kind: str  # "flask" or "fastapi": also the dispatcher's name

    def stats(self) -> dict[str, Any]:
        response = self.client.get(f"{self.url}/stats")
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        return data

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            assert time.monotonic() < deadline, f"stats never matched: {stats}"
            time.sleep(0.002)  # a polling interval, not a synchronization


@contextmanager
def flask_server(handler: WebhookHandler, settings: dict[str, Any]) -> Iterator[str]:
    """The Flask example on werkzeug's threaded server, over a KeyedDispatcher."""
    from werkzeug.serving import make_server

    dispatcher = KeyedDispatcher(
        halt_on_error=True, wait_warning=None, max_workers=WORKERS, metrics=True, name="flask", **settings
    )
    app = load_example("flask_webhooks").create_app(dispatcher, handler)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        dispatcher.shutdown(wait=True)


@contextmanager
def fastapi_server(handler: WebhookHandler, settings: dict[str, Any]) -> Iterator[str]:
    """The FastAPI example on uvicorn, over an AsyncKeyedDispatcher (closed by the app)."""
    import uvicorn

    dispatcher = AsyncKeyedDispatcher(
        WORKERS, halt_on_error=True, wait_warning=None, metrics=True, name="fastapi", **settings
    )
    app = load_example("fastapi_webhooks").create_app(dispatcher, handler)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while not server.started:
            assert thread.is_alive(), "uvicorn exited before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)  # a polling interval, not a synchronization
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


WORKERS = 16
SERVERS: dict[str, Callable[[WebhookHandler, dict[str, Any]], AbstractContextManager[str]]] = {
    "flask": flask_server,
    "fastapi": fastapi_server,
}


@pytest.fixture(params=sorted(SERVERS))
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """A factory: serve(latency=..., **dispatcher settings) -> Served."""
    kind: str = request.param
    stack: list[tuple[AbstractContextManager[str], OrderStore, Any]] = []

    def start(*, latency: float = 0.005, max_notional: Decimal | None = None, **settings: Any) -> Served:
        exchange = FakeExchange(latency, jitter=0.5, seed=1, max_notional=max_notional)
        store = OrderStore()
        handler = WebhookHandler(exchange, store)
        server = SERVERS[kind](handler, settings)
        url = server.__enter__()
        client = httpx.Client(timeout=DEADLINE)
        stack.append((server, store, client))
        return Served(url, exchange, store, handler, client, kind)

    yield start
    for server, store, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)
        store.close()


def body(strategy: int, symbols: list[str], seq: int, orders: int = 2) -> dict[str, Any]:
    limits = [{"type": "LIMIT", "side": "buy", "price": str(100 - i), "qty": "0.1"} for i in range(orders)]
    return {
        "strategy_id": strategy,
        "symbols": symbols,
        "seq": seq,
        "orders": [{"type": "CANCEL_ALL"}, *limits],
    }


SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"]


def burst(count: int) -> list[dict[str, Any]]:
    """Webhooks over 2 strategies x 4 symbols, every fifth on two symbols."""
    bodies = []
    for seq in range(count):
        strategy = 1 + seq % 2
        first = SYMBOLS[(seq * 7 // 2) % 4]
        symbols = [first, SYMBOLS[(SYMBOLS.index(first) + 1) % 4]] if seq % 5 == 0 else [first]
        bodies.append(body(strategy, symbols, seq))
    return bodies


class Clients:
    """httpx clients, one per client thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def post(self, url: str, payload: Any = None, *, content: bytes | None = None) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=DEADLINE)
            with self._lock:
                self._all.append(client)
        if content is not None:
            return client.post(url, content=content, headers={"Content-Type": "application/json"})
        return client.post(url, json=payload)

    def close(self) -> None:
        for client in self._all:
            client.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    pool = Clients()
    yield pool
    pool.close()


@pytest.mark.slow
def test_a_concurrent_burst_keeps_exchange_and_db_in_step(
    serve: Callable[..., Served], clients: Clients
) -> None:
    served = serve()
    bodies = burst(60)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: clients.post(f"{served.url}/webhook", b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    for payload, response in zip(bodies, responses, strict=True):
        answer = response.json()
        assert answer["webhook"] == f"{payload['strategy_id']}:{payload['seq']}"
        assert len(answer["placed"]) == 2 * len(payload["symbols"])
    webhooks = [parse_webhook(b) for b in bodies]
    log = served.handler.log
    assert log.overlaps == 0
    # Arrival order at the server is whatever the client threads made it;
    # the final orders of each key must be those of its last-run webhook.
    by_seq = {webhook.seq: webhook for webhook in webhooks}
    for key, seqs in log.started.items():
        assert key not in audit(served.exchange, served.store, [by_seq[seqs[-1]]]).stale
    assert audit(served.exchange, served.store, webhooks).disagreeing == ()
    assert served.stats()["completed"] == len(bodies)


@pytest.mark.slow
def test_per_key_order_follows_arrival_order(serve: Callable[..., Served], clients: Clients) -> None:
    # Requests are in flight together (each on its own client thread, and
    # each key's webhooks queue behind the slow exchange), but each one
    # arrives after the previous was admitted (the server's ``submitted``
    # count says so): the arrival order is the seq order, and every key
    # must apply its webhooks in that order.
    served = serve(latency=0.010)
    bodies = burst(30)
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = []
        for n, payload in enumerate(bodies):
            futures.append(pool.submit(clients.post, f"{served.url}/webhook", payload))
            served.wait_stats(lambda stats, n=n: stats["submitted"] == n + 1)  # type: ignore[misc]
        statuses = [future.result().status_code for future in futures]
    assert statuses == [200] * len(bodies)
    webhooks = [parse_webhook(b) for b in bodies]
    for key, seqs in served.handler.log.started.items():
        assert seqs == sorted(seqs), f"{key} applied out of arrival order: {seqs}"
    assert served.handler.log.overlaps == 0
    findings = audit(served.exchange, served.store, webhooks)
    assert findings.disagreeing == ()
    assert findings.stale == ()


def with_limit(**fields: Any) -> dict[str, Any]:
    order = {"type": "LIMIT", "side": "buy", "price": "1", "qty": "1", **fields}
    return {**body(1, ["BTC/USDT"], 1), "orders": [order]}


BAD_BODIES: list[tuple[bytes | dict[str, Any] | list[Any], str]] = [
    (b"{not json", "JSON"),
    ([1, 2], "JSON object"),
    ({"symbols": ["BTC/USDT"], "seq": 1, "orders": [{"type": "CANCEL_ALL"}]}, "strategy_id"),
    ({**body(1, ["BTC/USDT"], 1), "strategy_id": True}, "strategy_id"),
    ({**body(1, ["BTC/USDT"], 1), "seq": -1}, "seq"),
    ({**body(1, ["BTC/USDT"], 1), "symbols": []}, "symbols"),
    ({**body(1, ["BTC/USDT"], 1), "symbols": ["BTC/USDT", "BTC/USDT"]}, "repeat"),
    ({**body(1, ["BTC/USDT"], 1), "orders": []}, "orders"),
    ({**body(1, ["BTC/USDT"], 1), "orders": [{"type": "MARKET"}]}, "type"),
    (with_limit(price=1.5), "price"),
    (with_limit(price="abc"), "price"),
    (with_limit(side="up"), "side"),
    (with_limit(qty="0"), "qty"),
]


@pytest.mark.slow
def test_bad_payloads_get_400_and_change_nothing(serve: Callable[..., Served], clients: Clients) -> None:
    served = serve()
    for payload, word in BAD_BODIES:
        if isinstance(payload, bytes):
            response = clients.post(f"{served.url}/webhook", content=payload)
        else:
            response = clients.post(f"{served.url}/webhook", payload)
        assert response.status_code == 400, payload
        assert word in response.json()["error"], (payload, response.json())
    stats = served.stats()
    assert (stats["submitted"], stats["active_shards"]) == (0, 0)
    assert served.store.count() == 0
    assert served.exchange.calls == 0


@pytest.mark.slow
def test_overload_gets_503_with_retry_after(serve: Callable[..., Served], clients: Clients) -> None:
    # One key, max_pending=2, no waiting for room: with the exchange held,
    # one webhook runs (blocked in its first exchange call), two wait, and
    # every other one is refused at once. 3 admitted, 7 refused, whatever
    # the order the 10 requests arrive in.
    served = serve(max_pending=2, submit_timeout=0)
    served.exchange.pause()
    bodies = [body(1, ["BTC/USDT"], seq) for seq in range(10)]
    answered: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def send(payload: dict[str, Any]) -> None:
        response = clients.post(f"{served.url}/webhook", payload)
        with lock:
            answered.append((payload["seq"], response))

    threads = [threading.Thread(target=send, args=(payload,)) for payload in bodies]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            with lock:
                refused = list(answered)
            if len(refused) == 7:
                break
            assert time.monotonic() < deadline, f"only {len(refused)} answers"
            time.sleep(0.002)  # a polling interval, not a synchronization
    finally:
        served.exchange.resume()
        for thread in threads:
            thread.join()
    for _, response in refused:
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "pending" in response.json()["error"]
    ok = [seq for seq, response in answered if response.status_code == 200]
    assert len(ok) == 3
    for seq, _ in refused:
        assert served.store.count(f"1:{seq}") == 0
    stats = served.stats()
    assert (stats["submitted"], stats["completed"]) == (3, 3)


@pytest.mark.slow
def test_start_timeout_gets_504_and_the_webhook_never_runs(
    serve: Callable[..., Served], clients: Clients
) -> None:
    served = serve(start_timeout=0.3)
    served.exchange.pause()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], 1))
        served.wait_stats(lambda stats: stats["running"] == 1)
        second = pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], 2))
        late = second.result()
        served.exchange.resume()
        assert first.result().status_code == 200
    assert late.status_code == 504
    assert "start" in late.json()["error"]
    assert served.store.count("1:2") == 0
    assert served.handler.log.started[next(iter(served.handler.log.started))] == [1]


@pytest.mark.slow
def test_an_exchange_refusal_halts_the_key_until_resumed(
    serve: Callable[..., Served], clients: Clients
) -> None:
    served = serve(max_notional=Decimal(1000))
    url = f"{served.url}/webhook"
    huge = body(1, ["BTC/USDT"], 1)
    huge["orders"][2]["qty"] = "1000"  # the second LIMIT; the first is placed
    refused = clients.post(url, huge)
    assert refused.status_code == 502
    assert "insufficient balance" in refused.json()["error"]
    # The order placed before the refusal is in the table: still in step.
    assert served.store.count("1:1") == 1
    assert audit(served.exchange, served.store, [parse_webhook(huge)]).disagreeing == ()
    halted = clients.post(url, body(1, ["BTC/USDT"], 2))
    assert halted.status_code == 409
    assert "halted" in halted.json()["error"]
    assert clients.post(url, body(1, ["ETH/USDT"], 3)).status_code == 200
    assert clients.post(f"{served.url}/resume", {"strategy_id": 1}).status_code == 400
    resumed = clients.post(f"{served.url}/resume", {"strategy_id": 1, "symbol": "BTC/USDT"})
    assert resumed.json() == {"key": "strategy_1_symbol_BTC/USDT", "resumed": True}
    assert clients.post(url, body(1, ["BTC/USDT"], 4)).status_code == 200
    assert served.stats()["halted_keys"] == 0
    assert audit(served.exchange, served.store, [parse_webhook(body(1, ["BTC/USDT"], 4))]).disagreeing == ()


def test_stats_answers_json(serve: Callable[..., Served]) -> None:
    served = serve()
    stats = served.stats()
    assert {"submitted", "pending", "running", "active_shards", "max_workers"} <= set(stats)
    assert stats["max_workers"] == WORKERS


@pytest.mark.slow
def test_metrics_are_scraped_during_a_burst(serve: Callable[..., Served], clients: Clients) -> None:
    pytest.importorskip("prometheus_client")
    from tests.metrics_support import labelled, parse_exposition, value

    served = serve(latency=0.01)
    name = served.kind
    bodies = burst(40)
    scrapes: list[dict[str, float]] = []
    with ThreadPoolExecutor(16) as pool:
        responses = pool.map(lambda b: clients.post(f"{served.url}/webhook", b), bodies)
        while True:
            answer = served.client.get(f"{served.url}/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            samples, types = parse_exposition(answer.text)
            assert types["keyed_dispatch_job_wait_seconds"] == "histogram"
            completed = value(samples, "keyed_dispatch_jobs_total", dispatcher=name, outcome="completed")
            scrapes.append(
                {
                    "completed": completed,
                    "waits": value(samples, "keyed_dispatch_job_wait_seconds_count", dispatcher=name),
                    "runs": value(samples, "keyed_dispatch_job_run_seconds_count", dispatcher=name),
                    "in_flight": value(samples, "keyed_dispatch_jobs_pending", dispatcher=name)
                    + value(samples, "keyed_dispatch_jobs_running", dispatcher=name),
                }
            )
            if completed == len(bodies):
                break
        assert [r.status_code for r in responses] == [200] * len(bodies)
    for field in ("completed", "waits", "runs"):  # counters never go back
        series = [scrape[field] for scrape in scrapes]
        assert series == sorted(series), field
    for scrape in scrapes:
        assert scrape["completed"] <= scrape["runs"] <= scrape["waits"] <= len(bodies)
        assert scrape["in_flight"] <= len(bodies) - scrape["completed"]
    # After the burst: one job per webhook, each waited and ran once.
    samples, _ = parse_exposition(served.client.get(f"{served.url}/metrics").text)
    assert value(samples, "keyed_dispatch_job_wait_seconds_count", dispatcher=name) == len(bodies)
    assert value(samples, "keyed_dispatch_job_run_seconds_count", dispatcher=name) == len(bodies)
    buckets = labelled(samples, "keyed_dispatch_job_run_seconds_bucket", "le", dispatcher=name)
    assert buckets["0.01"] == 0  # a webhook makes 3 exchange calls or more, of 5 ms or more each
    assert buckets["+Inf"] == len(bodies)
    assert value(samples, "keyed_dispatch_keys_active", dispatcher=name) == 0
    assert served.stats()["completed"] == len(bodies)
