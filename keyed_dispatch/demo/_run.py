"""What a demo run is made of: its options, its burst, a mode's row, progress.

Shared by the in-process harness (:mod:`._harness`) and the distributed row
(:mod:`._distributed`), so neither imports the other's module at load time.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO

from keyed_dispatch import WebhookKey, webhook_key

from ._webhooks import LimitOrder, Webhook

__all__ = ["SYMBOLS", "Burst", "DemoOptions", "ModeResult", "Progress", "make_burst", "percentile"]

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
        seed: the random seed of the burst and of the latency jitter.
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
        throughput: webhooks answered (applied or superseded) per second.
        p50_ms, p99_ms: arrival-to-completion latency percentiles of the
            webhooks that ran.
        failures: the failures by exception type.
        superseded: webhooks that never ran because a later webhook on
            their keys superseded them (``options(supersede=True)``); not
            an error.
        exchange_calls: calls made to the exchange; None where the mode
            cannot count them (calls made in other processes).
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
    superseded: int = 0
    exchange_calls: int | None = None

    @property
    def errors(self) -> int:
        """The sum of the error columns; a correct mode shows 0 (superseded webhooks are not errors)."""
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


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with ``fraction`` of the values at or below it.

    NaN for no values.
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
