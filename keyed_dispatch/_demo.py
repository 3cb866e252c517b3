"""``python -m keyed_dispatch demo``: the seed's webhook race, reproduced and fixed.

One burst of webhooks for a handful of ``(strategy, symbol)`` keys is fired
from many request threads, the way a web server's threads would take them,
three times over a fresh fake exchange and a fresh SQLite order table:

* ``unsafe``: the handler runs in the request thread, uncoordinated;
* ``locks``: the seed's WebhookLockManager around the handler;
* ``keyed``: the request thread submits the handler to a KeyedDispatcher
  (``submit_multi`` on the webhook's keys) and waits for its result.

With ``--distributed`` a fourth row, ``distributed``, runs the same burst
across processes: submitter processes submit it through PostgresDispatcher
to worker processes, over an exchange and an orders table shared in
PostgreSQL (an embedded server unless ``--dsn`` names one); see
:mod:`keyed_dispatch._demo_distributed`. It needs the ``postgres-embedded``
extra, so the default run leaves it out (``--mode distributed`` also runs
it; ``--mode distributed-unsafe`` runs the control: the same processes
and shared world, without ordering).

Then it prints one row per mode (see :class:`ModeResult`). Modes live in a
registry (:data:`MODES`, :func:`register_mode`): a mode is a function
``(burst, options, progress) -> ModeResult``, and :class:`Harness` gives it
the world, the firing threads and the audit, so another mode is one function.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import IO, Any, TypeVar

from ._config import DispatcherConfig
from ._demo_exchange import FakeExchange
from ._demo_locks import WebhookLockManager
from ._demo_store import OrderStore
from ._demo_webhooks import LimitOrder, Webhook, WebhookHandler, audit
from ._keys import WebhookKey, webhook_key
from ._thread import KeyedDispatcher

__all__ = [
    "MODES",
    "POSTGRES_MODES",
    "Burst",
    "DemoOptions",
    "Harness",
    "ModeResult",
    "Progress",
    "main",
    "make_burst",
    "register_mode",
    "run_mode",
]

_T = TypeVar("_T")

SYMBOLS = (
    "BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT", "DOT/USDT", "LTC/USDT",
    "AVAX/USDT", "LINK/USDT", "ATOM/USDT", "TRX/USDT",
)  # fmt: skip


@dataclass(frozen=True)
class DemoOptions:
    """The knobs of a demo run (the CLI flags).

    Attributes:
        webhooks: webhooks in the burst.
        keys: distinct ``(strategy, symbol)`` keys (two strategies).
        latency_ms: milliseconds per exchange call (a round trip).
        jitter: relative spread of each call's latency.
        threads: request threads firing the burst (and dispatcher workers).
        orders: LIMIT orders per webhook and symbol.
        multi: share of webhooks that act on two symbols of one strategy.
        seed: seeds the burst and the latency jitter.
        lock_timeout: the ``locks`` mode's acquisition timeout, seconds.
        db: the SQLite database: ``:memory:`` or a file path.
        submitters: the distributed modes' submitter processes.
        workers: the distributed modes' worker processes.
        dsn: the distributed modes' PostgreSQL; None starts an embedded one.
    """

    webhooks: int = 240
    keys: int = 8
    latency_ms: float = 20.0
    jitter: float = 0.5
    threads: int = 32
    orders: int = 2
    multi: float = 0.1
    seed: int = 1
    lock_timeout: float = 30.0
    db: str = ":memory:"
    submitters: int = 2
    workers: int = 2
    dsn: str | None = None

    def __post_init__(self) -> None:
        if self.webhooks < 1 or self.keys < 1 or self.threads < 1 or self.orders < 0:
            raise ValueError("webhooks, keys and threads must be >= 1, orders >= 0")
        if self.submitters < 1 or self.workers < 1:
            raise ValueError("submitters and workers must be >= 1")
        if self.keys > 2 * len(SYMBOLS):
            raise ValueError(f"at most {2 * len(SYMBOLS)} keys")
        if self.latency_ms < 0 or not 0 <= self.multi <= 1 or not 0 <= self.jitter < 1:
            raise ValueError("need latency_ms >= 0, 0 <= multi <= 1 and 0 <= jitter < 1")


@dataclass(frozen=True)
class Burst:
    """The webhooks of one run, in arrival order (``seq`` increasing).

    A webhook's ``seq`` is its place in the whole burst, so on each key the
    arrival order is the order of ``seq``.
    """

    webhooks: tuple[Webhook, ...]
    keys: tuple[WebhookKey, ...]


def make_burst(options: DemoOptions) -> Burst:
    """Build the burst ``options`` describes, the same for the same seed.

    Keys alternate between strategies 1 and 2 over :data:`SYMBOLS`; each
    webhook picks a key at random and, with probability ``multi``, a second
    symbol of the same strategy. Every webhook cancels all, then places
    ``orders`` buy orders per symbol.
    """
    rng = random.Random(options.seed)  # noqa: S311 - a reproducible workload
    pairs = [(1 + i % 2, SYMBOLS[i // 2]) for i in range(options.keys)]
    by_strategy: dict[int, list[str]] = {}
    for strategy, symbol in pairs:
        by_strategy.setdefault(strategy, []).append(symbol)
    webhooks: list[Webhook] = []
    for seq in range(options.webhooks):
        strategy, symbol = rng.choice(pairs)
        symbols = [symbol]
        others = [s for s in by_strategy[strategy] if s != symbol]
        if others and rng.random() < options.multi:
            symbols.append(rng.choice(others))
        base = Decimal(100 + rng.randrange(50))
        limits = tuple(LimitOrder("buy", base - i, Decimal("0.1")) for i in range(options.orders))
        webhooks.append(Webhook(strategy, tuple(symbols), seq, True, limits))
    keys = tuple(webhook_key(strategy, symbol) for strategy, symbol in pairs)
    return Burst(tuple(webhooks), keys)


@dataclass(frozen=True)
class ModeResult:
    """One row of the table.

    Attributes:
        mode: the mode's name.
        webhooks: webhooks fired.
        failed: webhooks whose handling raised (lock timeouts, refusals).
        disagreeing_keys: keys whose open orders differ between the exchange
            and the database at the end.
        stale_keys: keys whose open orders at the exchange are not those of
            the last-arrived webhook of the key (an out-of-order application).
        out_of_order: webhooks whose handling began after that of a
            later-arrived webhook sharing a key.
        overlaps: times a webhook began on a key another one was still on.
        keys: keys in the burst.
        seconds: from the first arrival to the last completion.
        throughput: completed webhooks per second.
        p50_ms, p99_ms: arrival-to-completion latency percentiles.
        failures: the failures by exception type.
    """

    mode: str
    webhooks: int
    failed: int
    disagreeing_keys: int
    stale_keys: int
    out_of_order: int
    overlaps: int
    keys: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """The sum of the error columns; a correct mode shows 0."""
        return self.failed + self.disagreeing_keys + self.stale_keys + self.out_of_order + self.overlaps


class Progress:
    """Thread-safe progress on a stream (stderr), throttled.

    On a terminal one line is redrawn; elsewhere a line is written at each
    quarter of the run. ``Progress(None)`` is silent.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self._tty = bool(stream is not None and stream.isatty())
        self._lock = threading.Lock()
        self._mode = ""
        self._total = 0
        self._done = 0
        self._shown = 0.0
        self._quarter = 0

    def start(self, mode: str, total: int) -> None:
        """A mode begins; ``total`` webhooks are to come."""
        with self._lock:
            self._mode, self._total, self._done, self._quarter = mode, total, 0, 0
        self._write(f"{mode}: firing {total} webhooks", final=not self._tty)

    def advance(self) -> None:
        """One more webhook completed (or failed)."""
        with self._lock:
            self._done += 1
            done, total = self._done, self._total
            now = time.monotonic()
            if self._tty:
                if now - self._shown < 0.1 and done < total:
                    return
                self._shown = now
            else:
                quarter = 4 * done // max(total, 1)
                if quarter <= self._quarter or done == total:
                    return
                self._quarter = quarter
        self._write(f"{self._mode}: {done}/{total} webhooks done", final=not self._tty)

    def finish(self, result: ModeResult) -> None:
        """A mode ended."""
        self._write(f"{result.mode}: done in {result.seconds:.1f}s, {result.errors} errors", final=True)

    def _write(self, text: str, *, final: bool) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._tty:
            stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            stream.write(text + "\n")
        stream.flush()


class Harness:
    """A fresh world for one mode, the request threads, and the audit.

    The world: a FakeExchange with the options' latency, an OrderStore on
    ``options.db``, and a WebhookHandler over both. :meth:`fire` runs the
    burst on ``options.threads`` request threads; :meth:`result` audits.
    """

    def __init__(self, burst: Burst, options: DemoOptions, progress: Progress) -> None:
        self.burst = burst
        self.options = options
        self.progress = progress
        self.exchange = FakeExchange(
            options.latency_ms / 1000, jitter=options.jitter, seed=options.seed, max_notional=None
        )
        self.store = OrderStore(options.db)
        self.handler = WebhookHandler(self.exchange, self.store)
        self.arrived: dict[int, float] = {}
        self.failures: dict[int, BaseException] = {}
        self.started = 0.0
        self.ended = 0.0

    def fire(self, admit: Callable[[Webhook], _T], complete: Callable[[Webhook, _T], object]) -> None:
        """Fire the burst and return when every webhook is completed.

        Each request thread repeatedly takes the next webhook of the burst
        (its arrival, stamped under the arrival lock) and calls
        ``admit(webhook)`` still under that lock, so what ``admit`` does
        happens in arrival order; it must not block. Then, outside the lock,
        ``complete(webhook, token)`` with what ``admit`` returned: it blocks
        until the webhook is handled. An exception from either counts the
        webhook as failed.
        """
        arrivals = iter(self.burst.webhooks)
        arrival_lock = threading.Lock()
        self.started = time.monotonic()

        def request_thread() -> None:
            while True:
                token: Any = None
                failed: BaseException | None = None
                with arrival_lock:
                    webhook = next(arrivals, None)
                    if webhook is None:
                        return
                    self.arrived[webhook.seq] = time.monotonic()
                    try:
                        token = admit(webhook)
                    except Exception as exc:  # noqa: BLE001 - every refusal counts as a failure
                        failed = exc
                if failed is None:
                    try:
                        complete(webhook, token)
                    except Exception as exc:  # noqa: BLE001 - idem
                        failed = exc
                if failed is not None:
                    self.failures[webhook.seq] = failed
                self.progress.advance()

        threads = [
            threading.Thread(target=request_thread, name=f"request-{n}") for n in range(self.options.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.ended = time.monotonic()

    def result(self, mode: str) -> ModeResult:
        """Audit the world after :meth:`fire` and build the mode's row."""
        applied = [w for w in self.burst.webhooks if w.seq not in self.failures]
        findings = audit(self.exchange, self.store, applied)
        log = self.handler.log
        latencies = sorted(
            (log.times[w.name].finished or 0.0) - self.arrived[w.seq] for w in applied if w.name in log.times
        )
        failures: dict[str, int] = {}
        for error in self.failures.values():
            failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
        seconds = self.ended - self.started
        self.store.close()
        return ModeResult(
            mode=mode,
            webhooks=len(self.burst.webhooks),
            failed=len(self.failures),
            disagreeing_keys=len(findings.disagreeing),
            stale_keys=len(findings.stale),
            out_of_order=log.out_of_order(),
            overlaps=log.overlaps,
            keys=len(self.burst.keys),
            seconds=seconds,
            throughput=len(applied) / seconds if seconds > 0 else math.inf,
            p50_ms=_percentile(latencies, 0.50) * 1000,
            p99_ms=_percentile(latencies, 0.99) * 1000,
            failures=failures,
        )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    # Nearest rank: the smallest value with at least ``fraction`` of the
    # values at or below it.
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# -- the modes --------------------------------------------------------------

ModeRunner = Callable[[Burst, DemoOptions, Progress], ModeResult]

MODES: dict[str, ModeRunner] = {}

#: Modes that need PostgreSQL: left out of a run unless named with
#: ``--mode`` (or ``--distributed``), and given ``options.dsn``.
POSTGRES_MODES: set[str] = set()


def register_mode(name: str, runner: ModeRunner, *, postgres: bool = False) -> None:
    """Add a mode; the table shows modes in registration order.

    A ``postgres`` mode is listed (``--mode`` accepts it) but runs only when
    asked for, so the default demo needs no database. ``main`` starts one
    embedded server for all of them unless ``--dsn`` names a database.
    """
    if name in MODES:
        raise ValueError(f"mode {name!r} is already registered")
    MODES[name] = runner
    if postgres:
        POSTGRES_MODES.add(name)


def run_mode(name: str, burst: Burst, options: DemoOptions, progress: Progress | None = None) -> ModeResult:
    """Run one registered mode on ``burst`` and return its row.

    Raises:
        KeyError: no mode has that name.
    """
    runner = MODES[name]
    progress = progress if progress is not None else Progress(None)
    progress.start(name, len(burst.webhooks))
    result = runner(burst, options, progress)
    progress.finish(result)
    return result


def _run_unsafe(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    harness = Harness(burst, options, progress)
    harness.fire(lambda webhook: None, lambda webhook, _: harness.handler.handle(webhook))
    return harness.result("unsafe")


def _run_locks(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    harness = Harness(burst, options, progress)
    manager = WebhookLockManager()

    def complete(webhook: Webhook, _: None) -> None:
        with manager.acquire_webhook_lock(webhook.strategy_id, webhook.symbols, options.lock_timeout):
            harness.handler.handle(webhook)

    harness.fire(lambda webhook: None, complete)
    return harness.result("locks")


def _run_keyed(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    harness = Harness(burst, options, progress)
    # An explicit config: the demo's figures must not depend on the
    # environment's KEYED_DISPATCH_* variables.
    config = DispatcherConfig(max_workers=options.threads, wait_warning=None)
    with KeyedDispatcher(config=config, name="demo") as dispatcher:
        harness.fire(
            lambda webhook: dispatcher.submit_multi(webhook.keys, harness.handler.handle, webhook),
            lambda webhook, future: future.result(),
        )
    return harness.result("keyed")


def _run_distributed(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    from ._demo_distributed import run_distributed  # noqa: PLC0415  # psycopg only when asked for

    return run_distributed(burst, options, progress)


def _run_distributed_unsafe(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    from ._demo_distributed import run_distributed  # noqa: PLC0415  # idem

    return run_distributed(burst, options, progress, ordered=False, mode="distributed-unsafe")


register_mode("unsafe", _run_unsafe)
register_mode("locks", _run_locks)
register_mode("keyed", _run_keyed)
register_mode("distributed-unsafe", _run_distributed_unsafe, postgres=True)
register_mode("distributed", _run_distributed, postgres=True)

#: The modes whose rows must be clean; ``main`` exits 1 otherwise.
CHECKED_MODES = ("keyed", "distributed")


# -- output -----------------------------------------------------------------

_COLUMNS = (
    ("mode", "{r.mode}"),
    ("exchange!=DB keys", "{r.disagreeing_keys}/{r.keys}"),
    ("stale keys", "{r.stale_keys}/{r.keys}"),
    ("overlapping", "{r.overlaps}"),
    ("out-of-order", "{r.out_of_order}/{r.webhooks}"),
    ("failed", "{r.failed}"),
    ("webhooks/s", "{r.throughput:.1f}"),
    ("p50 ms", "{r.p50_ms:.0f}"),
    ("p99 ms", "{r.p99_ms:.0f}"),
)


def format_table(results: Sequence[ModeResult]) -> str:
    """The results as an aligned text table, one row per mode."""
    rows = [[head for head, _ in _COLUMNS]]
    rows += [[cell.format(r=result) for _, cell in _COLUMNS] for result in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit 1 if the ``keyed`` or ``distributed`` mode shows any error."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m keyed_dispatch demo",
        description="Reproduce the seed's webhook race (unsafe), the lock-per-key baseline (locks) "
        "and KeyedDispatcher (keyed) on one burst; print one row per mode. --distributed adds the "
        "same burst across processes through PostgreSQL (distributed; needs the postgres-embedded "
        "extra or --dsn).",
    )
    parser.add_argument("--webhooks", type=int, default=defaults.webhooks, help="webhooks in the burst")
    parser.add_argument("--keys", type=int, default=defaults.keys, help="(strategy, symbol) keys")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms, help="per exchange call")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="request threads")
    parser.add_argument("--orders", type=int, default=defaults.orders, help="LIMIT orders per webhook")
    parser.add_argument("--multi", type=float, default=defaults.multi, help="share of 2-symbol webhooks")
    parser.add_argument(
        "--mode", action="append", choices=list(MODES), help="run only this mode (repeatable)"
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="also run the burst across processes through PostgreSQL (the distributed row)",
    )
    parser.add_argument(
        "--submitters", type=int, default=defaults.submitters, help="distributed: submitter processes"
    )
    parser.add_argument("--workers", type=int, default=defaults.workers, help="distributed: worker processes")
    parser.add_argument(
        "--dsn",
        default=None,
        help="distributed: a PostgreSQL DSN to use (default: start an embedded server)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--db", default=defaults.db, help="SQLite database file (default: in memory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        options = DemoOptions(
            webhooks=args.webhooks,
            keys=args.keys,
            latency_ms=args.latency_ms,
            threads=args.threads,
            orders=args.orders,
            multi=args.multi,
            seed=args.seed,
            db=args.db,
            submitters=args.submitters,
            workers=args.workers,
            dsn=args.dsn,
        )
    except ValueError as exc:
        parser.error(str(exc))
    burst = make_burst(options)
    progress = Progress(sys.stderr)
    names = list(args.mode or [name for name in MODES if name not in POSTGRES_MODES])
    if args.distributed and "distributed" not in names:
        names.append("distributed")
    with contextlib.ExitStack() as stack:
        if options.dsn is None and POSTGRES_MODES.intersection(names):
            try:
                from .postgres import EmbeddedPostgres  # noqa: PLC0415  # optional dependency

                server = stack.enter_context(EmbeddedPostgres())
            except ImportError as exc:
                print(f"python -m keyed_dispatch demo: {exc}", file=sys.stderr)
                return 2
            options = replace(options, dsn=server.dsn)
        results = [run_mode(name, burst, options, progress) for name in names]
    if args.json:
        shown = {
            name: value for name, value in asdict(options).items() if name != "dsn"
        }  # may hold a password
        print(json.dumps({"options": shown, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(
            f"{options.webhooks} webhooks on {options.keys} keys, {options.threads} request threads, "
            f"{options.latency_ms:g} ms per exchange call, seed {options.seed}"
        )
        if POSTGRES_MODES.intersection(names):
            print(
                f"distributed: {options.submitters} submitter and {options.workers} worker processes "
                "through PostgreSQL, exchange and orders shared in the database"
            )
        print(format_table(results))
    checked = [r for r in results if r.mode in CHECKED_MODES]
    return 1 if any(r.errors for r in checked) else 0
