"""instrument_meter: a dispatcher's figures as OpenTelemetry observable instruments."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError:
    raise ImportError(
        "keyed_dispatch.metrics.instrument_meter needs opentelemetry-api: pip install "
        "'keyed_dispatch[otel]' (from a checkout: pip install -e '.[otel]')"
    ) from None

from keyed_dispatch._histogram import HistogramSnapshot

from ._source import OUTCOMES, PostgresSource, Reading, Source, le_text, sources

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

    A :class:`~keyed_dispatch.postgres.PostgresDispatcher` is read from the
    database: ``keyed_dispatch.jobs.pending``, ``.jobs.running``,
    ``keyed_dispatch.keys.active`` and ``keyed_dispatch.key.depth`` as above,
    and its retained jobs as gauges (they go down when rows are pruned):
    ``keyed_dispatch.retained.jobs``, ``keyed_dispatch.retained.job.failures``
    and ``keyed_dispatch.retained.job.wait.*`` / ``.run.*``.

    One collection reads each dispatcher once, in the first instrument's
    callback (the SDK calls them in creation order); the other instruments
    report that same snapshot. Call it once per meter, with every
    dispatcher to export: instrument names may be created once per meter.

    Args:
        dispatchers: a dispatcher (created with ``metrics=True``, or a
            PostgresDispatcher), or an iterable of them (their names must
            differ).
        meter: an OpenTelemetry ``Meter``.
        top_keys: how many of the deepest keys get a depth value.
        timeout: seconds to wait for an AsyncKeyedDispatcher's event loop
            when collected from another thread.

    Raises:
        ValueError, TypeError: as :class:`PrometheusCollector`.
    """
    found = sources(dispatchers, top_keys, timeout)
    feed = _Feed(found)
    meter.create_observable_counter(
        "keyed_dispatch.jobs",
        [feed.refreshing(_jobs)],
        unit="{job}",
        description="Jobs finished, by outcome.",
    )
    meter.create_observable_counter(
        "keyed_dispatch.job.failures",
        [feed.reading(_failures, live=True)],
        unit="{job}",
        description="Failed jobs, by exception type name.",
    )
    meter.create_observable_counter(
        "keyed_dispatch.job.retries",
        [feed.reading(lambda r: [({}, r.retries)], live=True)],
        unit="{retry}",
        description="Retries scheduled.",
    )
    for field, name, unit, description in _UP_DOWN:
        live = None if field in _SHARED else True
        meter.create_observable_up_down_counter(
            name, [feed.reading(_field(field), live=live)], unit=unit, description=description
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
            [feed.reading(_histogram_count(field), live=True)],
            unit="{job}",
            description=f"{description} Values recorded.",
        )
        meter.create_observable_counter(
            f"{name}.sum",
            [feed.reading(_histogram_sum(field), live=True)],
            unit="s",
            description=f"{description} Total, in seconds.",
        )
        meter.create_observable_counter(
            f"{name}.bucket",
            [feed.reading(_histogram_buckets(field), live=True)],
            unit="{job}",
            description=f"{description} Values at most le seconds, cumulative.",
        )
    if any(source.retained for source in found):
        _retained_instruments(meter, feed)


def _retained_instruments(meter: Meter, feed: _Feed) -> None:
    # A PostgreSQL queue's figures count the jobs retained in the database:
    # they go down when rows are pruned, so they are gauges.
    meter.create_observable_gauge(
        "keyed_dispatch.retained.jobs",
        [feed.reading(_jobs, live=False)],
        unit="{job}",
        description="Finished jobs retained in the database, by outcome.",
    )
    meter.create_observable_gauge(
        "keyed_dispatch.retained.job.failures",
        [feed.reading(_failures, live=False)],
        unit="{job}",
        description="Failed jobs retained in the database, by exception type name.",
    )
    for field in ("wait", "run"):
        name = f"keyed_dispatch.retained.job.{field}"
        meter.create_observable_gauge(
            f"{name}.count", [feed.reading(_histogram_count(field), live=False)], unit="{job}"
        )
        meter.create_observable_gauge(
            f"{name}.sum", [feed.reading(_histogram_sum(field), live=False)], unit="s"
        )
        meter.create_observable_gauge(
            f"{name}.bucket", [feed.reading(_histogram_buckets(field), live=False)], unit="{job}"
        )


_UP_DOWN = (
    ("pending", "keyed_dispatch.jobs.pending", "{job}", "Jobs admitted, not started."),
    ("running", "keyed_dispatch.jobs.running", "{job}", "Jobs running now."),
    ("in_backoff", "keyed_dispatch.jobs.in_backoff", "{job}", "Jobs waiting for a retry."),
    ("keys_active", "keyed_dispatch.keys.active", "{key}", "Keys with unfinished jobs."),
    ("keys_halted", "keyed_dispatch.keys.halted", "{key}", "Keys halted by a failure."),
    ("keys_paused", "keyed_dispatch.keys.paused", "{key}", "Keys paused."),
)

# Figures that a PostgreSQL queue has too; the others are in-process only.
_SHARED = ("pending", "running", "keys_active")

# What an instrument reports of one reading: (attributes, value) pairs; the
# dispatcher attribute is added by _Feed.
_Points = Iterable[tuple[dict[str, str], float]]


class _Feed:
    """The readings of one collection, shared by the instruments' callbacks."""

    def __init__(self, readers: Sequence[Source | PostgresSource]) -> None:
        self._sources = readers
        self._readings: list[Reading] | None = None

    def refreshing(self, points: Callable[[Reading], _Points]) -> _Callback:
        # The first instrument's callback: it takes the collection's readings.
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            self._readings = [source.read() for source in self._sources]
            return self._observe(points, True)

        return callback

    def reading(self, points: Callable[[Reading], _Points], *, live: bool | None = None) -> _Callback:
        # ``live``: True for the in-process dispatchers only, False for the
        # PostgreSQL queues only, None for both.
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if self._readings is None:
                self._readings = [source.read() for source in self._sources]
            return self._observe(points, live)

        return callback

    def _observe(self, points: Callable[[Reading], _Points], live: bool | None = True) -> list[Observation]:
        assert self._readings is not None
        return [
            Observation(value, {"dispatcher": reading.dispatcher, **attributes})
            for reading in self._readings
            if live is None or live != reading.retained
            for attributes, value in points(reading)
        ]


def _jobs(reading: Reading) -> _Points:
    pairs = zip(OUTCOMES, reading.outcomes, strict=True)
    # A PostgreSQL queue supersedes nothing.
    return [
        ({"outcome": outcome}, count)
        for outcome, count in pairs
        if not (reading.retained and outcome == "superseded")
    ]


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
