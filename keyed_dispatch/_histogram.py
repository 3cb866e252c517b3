"""Latency histograms: fixed log-spaced buckets, a recorder and its snapshot.

A dispatcher created with ``metrics=True`` keeps two recorders, the
admission-to-start wait and the run time of its jobs, and updates them under
its lock (or on its loop). Recording a value is one ``bisect`` and two
additions; the bucket bounds are the same for every dispatcher, so exports
need no configuration and histograms of several processes add up.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["BOUNDS", "HistogramSnapshot", "Recorder", "Timings"]

BOUNDS: tuple[float, ...] = (*(float(f"{m}e{e}") for e in range(-6, 2) for m in (1, 2, 5)), 100.0)
"""Upper bounds of the buckets, in seconds: 1 us to 100 s, three per decade
(1, 2, 5). A value goes to the first bucket whose bound is at least the value
(Prometheus ``le``); values above 100 s go to a last, unbounded bucket."""


@dataclass(frozen=True)
class HistogramSnapshot:
    """A frozen copy of a latency histogram (see :attr:`DispatcherStats.wait`).

    Attributes:
        count: values recorded.
        sum: their total, in seconds.
        bounds: the upper bounds of the finite buckets, in seconds, ascending
            (1 us to 100 s, three per decade).
        counts: values per bucket, not cumulative: ``counts[i]`` holds the
            values ``v`` with ``bounds[i - 1] < v <= bounds[i]``, and the last
            entry (one more than ``bounds``) those above ``bounds[-1]``.
    """

    count: int
    sum: float
    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def buckets(self) -> tuple[tuple[float, int], ...]:
        """Cumulative ``(upper bound, values <= bound)`` pairs, ending with ``(math.inf, count)``.

        The shape of a Prometheus histogram's ``_bucket`` series.
        """
        pairs: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            pairs.append((bound, total))
        return tuple(pairs)

    @property
    def mean(self) -> float:
        """The mean value in seconds; NaN when nothing was recorded."""
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Estimate the ``q``-quantile in seconds, as PromQL's ``histogram_quantile`` does.

        The rank ``q * count`` falls in one bucket; the estimate interpolates
        linearly between that bucket's lower and upper bounds (the first
        bucket's lower bound is 0). A rank in the last, unbounded bucket gives
        the highest finite bound, 100 s. The error is at most the width of
        that bucket (a bucket spans a factor of 2 or 2.5).

        Returns:
            The estimate; NaN when nothing was recorded.

        Raises:
            ValueError: ``q`` is not between 0 and 1.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be between 0 and 1, got {q!r}")
        if not self.count:
            return math.nan
        rank = q * self.count
        below = 0
        bounds = self.bounds
        for index, n in enumerate(self.counts):
            if n and below + n >= rank:
                if index == len(bounds):
                    return bounds[-1]
                lower = bounds[index - 1] if index else 0.0
                return lower + (bounds[index] - lower) * (rank - below) / n
            below += n
        raise AssertionError("unreachable: the counts add up to count")


class Recorder:
    """The mutable side of a histogram. Not thread-safe: the dispatcher's lock
    (or loop) serializes ``add`` and ``snapshot``."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        """Record one value, in seconds."""
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> HistogramSnapshot:
        counts = tuple(self.counts)
        return HistogramSnapshot(count=sum(counts), sum=self.total, bounds=BOUNDS, counts=counts)


class Timings:
    """The two recorders of a dispatcher with ``metrics=True``.

    ``wait``: admission to start, recorded by the engine when it starts a job
    or grants an ``exclusive`` block. ``run``: from the call of the job (the
    entry of the block) to its retirement, recorded by the runner.
    """

    __slots__ = ("run", "wait")

    def __init__(self) -> None:
        self.wait = Recorder()
        self.run = Recorder()
