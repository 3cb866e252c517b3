"""The webhook server examples, served for real on 127.0.0.1.

Each test starts ``examples/flask_webhooks.py`` (werkzeug's threaded server
in a thread) or ``examples/fastapi_webhooks.py`` (uvicorn in a thread) on an
ephemeral port and talks HTTP to it from many client threads. Webhooks carry
the server's webhook secret and admin calls its admin token, except in the
tests of what a request without them gets.
"""

from __future__ import annotations

import importlib.util
import json
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

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher, webhook_key  # noqa: E402
from keyed_dispatch.demo import (  # noqa: E402
    WEBHOOK_SECRET_HEADER,
    Credentials,
    FakeExchange,
    OrderStore,
    WebhookHandler,
    audit,
    parse_webhook,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEADLINE = 30.0
WEBHOOK_SECRET = "webhook-secret-for-tests"  # noqa: S105 - the tests' own secret
ADMIN_TOKEN = "admin-token-for-tests"  # noqa: S105 - idem
CREDENTIALS = Credentials(WEBHOOK_SECRET, ADMIN_TOKEN)
WITH_SECRET = {WEBHOOK_SECRET_HEADER: WEBHOOK_SECRET}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    """A running server, its world, and an httpx client that sends no credentials."""

    url: str
    exchange: FakeExchange
    store: OrderStore
    handler: WebhookHandler
    client: Any
    kind: str  # "flask" or "fastapi": also the dispatcher's name

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """An admin call with the admin token; the answer must be 200."""
        response = self.client.request(method, f"{self.url}{path}", headers=AS_ADMIN, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

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
def flask_server(
    handler: WebhookHandler, credentials: Credentials, settings: dict[str, Any]
) -> Iterator[str]:
    """The Flask example on werkzeug's threaded server, over a KeyedDispatcher."""
    from werkzeug.serving import make_server

    dispatcher = KeyedDispatcher(
        halt_on_error=True, wait_warning=None, max_workers=WORKERS, metrics=True, name="flask", **settings
    )
    app = load_example("flask_webhooks").create_app(dispatcher, handler, credentials)
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
def fastapi_server(
    handler: WebhookHandler, credentials: Credentials, settings: dict[str, Any]
) -> Iterator[str]:
    """The FastAPI example on uvicorn, over an AsyncKeyedDispatcher (closed by the app)."""
    import uvicorn

    dispatcher = AsyncKeyedDispatcher(
        WORKERS, halt_on_error=True, wait_warning=None, metrics=True, name="fastapi", **settings
    )
    app = load_example("fastapi_webhooks").create_app(dispatcher, handler, credentials)
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
SERVERS: dict[str, Callable[[WebhookHandler, Credentials, dict[str, Any]], AbstractContextManager[str]]] = {
    "flask": flask_server,
    "fastapi": fastapi_server,
}


@pytest.fixture(params=sorted(SERVERS))
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """A factory: serve(latency=..., credentials=..., **dispatcher settings) -> Served."""
    kind: str = request.param
    stack: list[tuple[AbstractContextManager[str], OrderStore, Any]] = []

    def start(
        *,
        latency: float = 0.005,
        max_notional: Decimal | None = None,
        credentials: Credentials = CREDENTIALS,
        **settings: Any,
    ) -> Served:
        exchange = FakeExchange(latency, jitter=0.5, seed=1, max_notional=max_notional)
        store = OrderStore()
        handler = WebhookHandler(exchange, store)
        server = SERVERS[kind](handler, credentials, settings)
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
    """httpx clients, one per client thread; they send the webhook secret."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def post(self, url: str, payload: Any = None, *, content: bytes | None = None) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=DEADLINE, headers=WITH_SECRET)
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
    resume = f"{served.url}/resume"
    assert served.client.post(resume, json={"strategy_id": 1}, headers=AS_ADMIN).status_code == 400
    assert served.admin("GET", "/admin/keys/1/BTC/USDT")["halted"] is True
    resumed = served.admin("POST", "/resume", json={"strategy_id": 1, "symbol": "BTC/USDT"})
    assert resumed == {"key": "strategy_1_symbol_BTC/USDT", "resumed": True}
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


# -- credentials ------------------------------------------------------------------

BTC = "/admin/keys/1/BTC/USDT"
ADMIN_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/admin/keys", {}),
    ("GET", "/admin/keys?limit=1", {}),
    ("GET", BTC, {}),
    ("POST", f"{BTC}/pause", {}),
    ("POST", f"{BTC}/resume", {}),
    ("POST", f"{BTC}/cancel", {}),
    ("POST", "/resume", {"json": {"strategy_id": 1, "symbol": "BTC/USDT"}}),
]
BAD_ADMIN_HEADERS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": f"Bearer {WEBHOOK_SECRET}"},  # the webhook secret is not the admin token
    {WEBHOOK_SECRET_HEADER: ADMIN_TOKEN},
]


def key_state(served: Served) -> tuple[Any, ...]:
    """What an admin call could change, read with the token: the BTC key and the counts."""
    info = served.admin("GET", BTC)
    stats = served.stats()
    return (
        info["pending"],
        info["running"],
        info["paused"],
        info["halted"],
        stats["cancelled"],
        stats["paused_keys"],
        stats["submitted"],
    )


@pytest.mark.slow
def test_a_webhook_without_the_secret_gets_401_and_changes_nothing(serve: Callable[..., Served]) -> None:
    served = serve()
    url = f"{served.url}/webhook"
    client = served.client  # sends no secret of its own
    hook = body(1, ["BTC/USDT"], 1)
    attempts: list[tuple[dict[str, str], bytes | dict[str, Any]]] = [
        ({}, hook),
        ({WEBHOOK_SECRET_HEADER: "wrong"}, hook),
        ({WEBHOOK_SECRET_HEADER: f"{WEBHOOK_SECRET}x"}, hook),
        ({WEBHOOK_SECRET_HEADER: ""}, hook),
        ({}, {**hook, "secret": "wrong"}),
        ({}, {**hook, "secret": 12345}),
        ({}, {**hook, "secret": "\ud800"}),  # a lone surrogate: still a plain refusal
        ({WEBHOOK_SECRET_HEADER: "wrong"}, {**hook, "secret": WEBHOOK_SECRET}),  # the header decides
        ({"Authorization": f"Bearer {WEBHOOK_SECRET}"}, hook),
        ({}, b"{not json"),
        ({}, json_bytes([hook])),
    ]
    for headers, payload in attempts:
        content = payload if isinstance(payload, bytes) else json_bytes(payload)
        response = client.post(url, content=content, headers={"Content-Type": "application/json", **headers})
        assert response.status_code == 401, (headers, payload, response.text)
        assert "webhook secret" in response.json()["error"]
    stats = served.stats()
    assert (stats["submitted"], stats["active_shards"]) == (0, 0)
    assert served.exchange.calls == 0
    assert served.store.count() == 0
    # The secret in the header, or in the payload for senders that cannot set headers.
    assert client.post(url, json=hook, headers=WITH_SECRET).status_code == 200
    in_payload = {**body(1, ["BTC/USDT"], 2), "secret": WEBHOOK_SECRET}
    answer = client.post(url, json=in_payload)
    assert answer.status_code == 200, answer.text
    assert answer.json()["webhook"] == "1:2"
    assert served.stats()["completed"] == 2


@pytest.mark.slow
def test_admin_calls_without_the_token_get_401_and_change_nothing(
    serve: Callable[..., Served], clients: Clients
) -> None:
    # One webhook runs on BTC (held in the exchange), one waits behind it:
    # a pause, resume or cancel would show in the key's state.
    served = serve()
    served.exchange.pause()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], 1))
        served.wait_stats(lambda stats: stats["running"] == 1)
        second = pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], 2))
        served.wait_stats(lambda stats: stats["pending"] == 1)
        before = key_state(served)
        assert before == (1, True, False, False, 0, 0, 2)
        try:
            for method, path, kwargs in ADMIN_CALLS:
                for headers in BAD_ADMIN_HEADERS:
                    response = served.client.request(method, f"{served.url}{path}", headers=headers, **kwargs)
                    assert response.status_code == 401, (method, path, headers, response.text)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "admin token" in response.json()["error"]
            assert key_state(served) == before
        finally:
            served.exchange.resume()
        assert [first.result().status_code, second.result().status_code] == [200, 200]
    assert served.handler.log.started == {webhook_key(1, "BTC/USDT"): [1, 2]}


@pytest.mark.slow
def test_a_server_without_credentials_disables_webhooks_and_admin_calls(
    serve: Callable[..., Served],
) -> None:
    served = serve(credentials=Credentials())
    client = served.client
    for headers in ({}, WITH_SECRET):
        response = client.post(f"{served.url}/webhook", json=body(1, ["BTC/USDT"], 1), headers=headers)
        assert response.status_code == 403
        assert "KEYED_DISPATCH_WEBHOOK_SECRET" in response.json()["error"]
    for method, path, kwargs in ADMIN_CALLS:
        for headers in ({}, AS_ADMIN):
            response = client.request(method, f"{served.url}{path}", headers=headers, **kwargs)
            assert response.status_code == 403, (method, path, response.text)
            assert "KEYED_DISPATCH_ADMIN_TOKEN" in response.json()["error"]
    stats = served.stats()  # still open: counts only
    assert (stats["submitted"], stats["paused_keys"]) == (0, 0)
    assert served.exchange.calls == 0


# -- admin routes -----------------------------------------------------------------


@pytest.mark.slow
def test_pause_queues_a_keys_webhooks_and_resume_lets_them_run(
    serve: Callable[..., Served], clients: Clients
) -> None:
    served = serve()
    assert served.admin("POST", f"{BTC}/pause") == {"key": "strategy_1_symbol_BTC/USDT", "paused": True}
    assert served.admin("POST", f"{BTC}/pause")["paused"] is False  # already paused
    with ThreadPoolExecutor(2) as pool:
        held = []
        for seq in (1, 2):  # one after the other: the arrival order is known
            held.append(pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], seq)))
            served.wait_stats(lambda stats, seq=seq: stats["pending"] == seq)  # type: ignore[misc]
        # Other keys go on.
        assert clients.post(f"{served.url}/webhook", body(1, ["ETH/USDT"], 3)).status_code == 200
        info = served.admin("GET", BTC)
        assert info["oldest_wait_s"] >= 0
        assert {name: value for name, value in info.items() if name != "oldest_wait_s"} == {
            "key": "strategy_1_symbol_BTC/USDT",
            "strategy_id": 1,
            "symbol": "BTC/USDT",
            "pending": 2,
            "running": False,
            "halted": False,
            "paused": True,
            "in_backoff": False,
        }
        assert not any(future.done() for future in held)
        assert served.admin("POST", f"{BTC}/resume") == {"key": "strategy_1_symbol_BTC/USDT", "resumed": True}
        assert [future.result().status_code for future in held] == [200, 200]
    assert served.admin("POST", f"{BTC}/resume")["resumed"] is False  # nothing to lift
    assert served.handler.log.started[webhook_key(1, "BTC/USDT")] == [1, 2]
    assert served.stats()["paused_keys"] == 0


@pytest.mark.slow
def test_cancel_drops_a_keys_waiting_webhooks_with_409(
    serve: Callable[..., Served], clients: Clients
) -> None:
    served = serve()
    served.exchange.pause()
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], 1))
        served.wait_stats(lambda stats: stats["running"] == 1)
        waiting = [
            pool.submit(clients.post, f"{served.url}/webhook", body(1, ["BTC/USDT"], seq)) for seq in (2, 3)
        ]
        served.wait_stats(lambda stats: stats["pending"] == 2)
        try:
            answer = served.admin("POST", f"{BTC}/cancel")
        finally:
            served.exchange.resume()
        assert answer == {"key": "strategy_1_symbol_BTC/USDT", "cancelled": 2}
        for future in waiting:
            response = future.result()
            assert response.status_code == 409
            assert "cancelled" in response.json()["error"]
        assert running.result().status_code == 200  # the running webhook is not touched
    assert served.store.count("1:2") == served.store.count("1:3") == 0
    assert served.handler.log.started == {webhook_key(1, "BTC/USDT"): [1]}
    assert served.admin("POST", f"{BTC}/cancel")["cancelled"] == 0
    served.wait_stats(lambda stats: stats["cancelled"] == 2 and stats["completed"] == 1)


@pytest.mark.slow
def test_list_keys_deepest_first_with_a_limit(serve: Callable[..., Served], clients: Clients) -> None:
    served = serve()
    served.exchange.pause()
    # BTC: one running, two waiting; ETH: one running; SOL: paused, no work.
    bodies = [
        body(1, ["BTC/USDT"], 1),
        body(1, ["ETH/USDT"], 2),
        body(1, ["BTC/USDT"], 3),
        body(1, ["BTC/USDT"], 4),
    ]
    served.admin("POST", "/admin/keys/1/SOL/USDT/pause")
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = []
        for n, payload in enumerate(bodies):
            futures.append(pool.submit(clients.post, f"{served.url}/webhook", payload))
            served.wait_stats(lambda stats, n=n: stats["submitted"] == n + 1)  # type: ignore[misc]
        try:
            listed = served.admin("GET", "/admin/keys")["keys"]
            assert [(k["symbol"], k["pending"], k["running"], k["paused"]) for k in listed] == [
                ("BTC/USDT", 2, True, False),
                ("ETH/USDT", 0, True, False),
                ("SOL/USDT", 0, False, True),
            ]
            assert [k["key"] for k in served.admin("GET", "/admin/keys?limit=1")["keys"]] == [
                "strategy_1_symbol_BTC/USDT"
            ]
            assert served.admin("GET", "/admin/keys?limit=0") == {"keys": []}
            for bad in ("-1", "abc", "1.5"):
                response = served.client.get(f"{served.url}/admin/keys?limit={bad}", headers=AS_ADMIN)
                assert response.status_code == 400, bad
                assert "limit" in response.json()["error"]
        finally:
            served.exchange.resume()
        assert [future.result().status_code for future in futures] == [200] * len(bodies)
    served.wait_stats(lambda stats: stats["completed"] == len(bodies))
    assert [k["symbol"] for k in served.admin("GET", "/admin/keys")["keys"]] == ["SOL/USDT"]
    # A key with no work reads as empty; a symbol may be given URL-encoded.
    empty = served.admin("GET", "/admin/keys/2/ADA%2FUSDT")
    assert (empty["key"], empty["pending"], empty["running"], empty["paused"]) == (
        "strategy_2_symbol_ADA/USDT",
        0,
        False,
        False,
    )


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode()
