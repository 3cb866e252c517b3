"""instrument_meter: a dispatcher's figures as OpenTelemetry observable instruments."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError:
    raise ImportError(
        "keyed_dispatch.metrics.instrument_meter needs opentelemetry-api: pip install "
        "'keyed_dispatch[otel]' (from a checkout: pip install -e '.[otel]')"
    ) from None

from keyed_dispatch._histogram import HistogramSnapshot

from ._source import OUTCOMES, Reading, Source, le_text, sources

__all__ = ["instrument_meter"]

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


def instrument_meter(dispatchers: Any, meter: Meter, *, top_keys: int = 10, timeout: float = 5.0) -> None:
    """Create observable instruments on ``meter`` that read the dispatchers at each collection.

    The instruments mean what the Prometheus families of
    :class:`PrometheusCollector` mean, under dotted names, each with the
    attribute ``dispatcher`` (the dispatcher's ``name``):

    * counters: ``keyed_dispatch.jobs`` (attribute ``outcome``),
      ``keyed_dispatch.job.failures`` (attribute ``error.type``: the
      exception type name), ``keyed_dispatch.job.retries``;
    * up-down counters: ``keyed_dispatch.jobs.pending``,
      ``keyed_dispatch.jobs.running``, ``keyed_dispatch.jobs.in_backoff``,
      ``keyed_dispatch.keys.active``, ``keyed_dispatch.keys.halted``,
      ``keyed_dispatch.keys.paused``;
    * a gauge: ``keyed_dispatch.key.depth`` (attribute ``key``), for the
      ``top_keys`` deepest keys only;
    * the wait and run histograms, ``keyed_dispatch.job.wait`` and
      ``keyed_dispatch.job.run``, as observable counters of their buckets.
      The OpenTelemetry API has no asynchronous histogram, and recording
      each job in a synchronous one would put the SDK's cost (a lock,
      attribute handling) on every job of the dispatcher; so each histogram
      is exported as three counters read from the dispatcher's own fixed
      buckets: ``<name>.count`` (``{job}``), ``<name>.sum`` (``s``) and
      ``<name>.bucket`` (``{job}``, attribute ``le``: the jobs whose value
      is at most ``le`` seconds, cumulative, ``+Inf`` included, as a
      Prometheus histogram's ``_bucket`` series).

    One collection reads each dispatcher once, in the first instrument's
    callback (the SDK calls them in creation order); the other instruments
    report that same snapshot. Call it once per meter, with every
    dispatcher to export: instrument names may be created once per meter.

    Args:
        dispatchers: a dispatcher created with ``metrics=True``, or an
            iterable of them (their names must differ).
        meter: an OpenTelemetry ``Meter``.
        top_keys: how many of the deepest keys get a depth value.
        timeout: seconds to wait for an AsyncKeyedDispatcher's event loop
            when collected from another thread.

    Raises:
        ValueError, TypeError: as :class:`PrometheusCollector`.
    """
    feed = _Feed(sources(dispatchers, top_keys, timeout))
    meter.create_observable_counter(
        "keyed_dispatch.jobs",
        [feed.refreshing(_jobs)],
        unit="{job}",
        description="Jobs finished, by outcome.",
    )
    meter.create_observable_counter(
        "keyed_dispatch.job.failures",
        [feed.reading(_failures)],
        unit="{job}",
        description="Failed jobs, by exception type name.",
    )
    meter.create_observable_counter(
        "keyed_dispatch.job.retries",
        [feed.reading(lambda r: [({}, r.retries)])],
        unit="{retry}",
        description="Retries scheduled.",
    )
    for field, name, unit, description in _UP_DOWN:
        meter.create_observable_up_down_counter(
            name, [feed.reading(_field(field))], unit=unit, description=description
        )
    meter.create_observable_gauge(
        "keyed_dispatch.key.depth",
        [feed.reading(lambda r: [({"key": key}, depth) for key, depth in r.depths])],
        unit="{job}",
        description="Unfinished jobs of the deepest keys.",
    )
    for field, description in (
        ("wait", "Wait of a job from admission to its start."),
        ("run", "Run time of a job attempt."),
    ):
        name = f"keyed_dispatch.job.{field}"
        meter.create_observable_counter(
            f"{name}.count",
            [feed.reading(_histogram_count(field))],
            unit="{job}",
            description=f"{description} Values recorded.",
        )
        meter.create_observable_counter(
            f"{name}.sum",
            [feed.reading(_histogram_sum(field))],
            unit="s",
            description=f"{description} Total, in seconds.",
        )
        meter.create_observable_counter(
            f"{name}.bucket",
            [feed.reading(_histogram_buckets(field))],
            unit="{job}",
            description=f"{description} Values at most le seconds, cumulative.",
        )


_UP_DOWN = (
    ("pending", "keyed_dispatch.jobs.pending", "{job}", "Jobs admitted, not started."),
    ("running", "keyed_dispatch.jobs.running", "{job}", "Jobs running now."),
    ("in_backoff", "keyed_dispatch.jobs.in_backoff", "{job}", "Jobs waiting for a retry."),
    ("keys_active", "keyed_dispatch.keys.active", "{key}", "Keys with unfinished jobs."),
    ("keys_halted", "keyed_dispatch.keys.halted", "{key}", "Keys halted by a failure."),
    ("keys_paused", "keyed_dispatch.keys.paused", "{key}", "Keys paused."),
)

# What an instrument reports of one reading: (attributes, value) pairs; the
# dispatcher attribute is added by _Feed.
_Points = Iterable[tuple[dict[str, str], float]]


class _Feed:
    """The readings of one collection, shared by the instruments' callbacks."""

    def __init__(self, readers: list[Source]) -> None:
        self._sources = readers
        self._readings: list[Reading] | None = None

    def refreshing(self, points: Callable[[Reading], _Points]) -> _Callback:
        # The first instrument's callback: it takes the collection's readings.
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            self._readings = [source.read() for source in self._sources]
            return self._observe(points)

        return callback

    def reading(self, points: Callable[[Reading], _Points]) -> _Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if self._readings is None:
                self._readings = [source.read() for source in self._sources]
            return self._observe(points)

        return callback

    def _observe(self, points: Callable[[Reading], _Points]) -> list[Observation]:
        assert self._readings is not None
        return [
            Observation(value, {"dispatcher": reading.dispatcher, **attributes})
            for reading in self._readings
            for attributes, value in points(reading)
        ]


def _jobs(reading: Reading) -> _Points:
    return [({"outcome": outcome}, count) for outcome, count in zip(OUTCOMES, reading.outcomes, strict=True)]


def _failures(reading: Reading) -> _Points:
    return [({"error.type": name}, count) for name, count in reading.failures]


def _field(name: str) -> Callable[[Reading], _Points]:
    def points(reading: Reading) -> _Points:
        return [({}, getattr(reading, name))]

    return points


def _histogram(reading: Reading, field: str) -> HistogramSnapshot:
    histogram: HistogramSnapshot = getattr(reading, field)
    return histogram


def _histogram_count(field: str) -> Callable[[Reading], _Points]:
    def points(reading: Reading) -> _Points:
        return [({}, _histogram(reading, field).count)]

    return points


def _histogram_sum(field: str) -> Callable[[Reading], _Points]:
    def points(reading: Reading) -> _Points:
        return [({}, _histogram(reading, field).sum)]

    return points


def _histogram_buckets(field: str) -> Callable[[Reading], _Points]:
    def points(reading: Reading) -> _Points:
        return [({"le": le_text(bound)}, count) for bound, count in _histogram(reading, field).buckets]

    return points
