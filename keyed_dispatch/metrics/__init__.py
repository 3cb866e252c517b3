"""Exporters of a dispatcher's figures: Prometheus and OpenTelemetry.

``PrometheusCollector`` (the ``prometheus`` extra) is a custom collector to
register on a ``prometheus_client`` registry; ``instrument_meter`` (the
``otel`` extra) creates observable instruments on an OpenTelemetry meter.
Both read :meth:`~keyed_dispatch.KeyedDispatcher.stats` snapshots when
scraped or collected, never per job, and both need a dispatcher created with
``metrics=True`` (for the wait and run histograms), or a
:class:`~keyed_dispatch.postgres.PostgresDispatcher`, whose figures come from
the database. Each is imported on first use, with its library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["PrometheusCollector", "instrument_meter"]

if TYPE_CHECKING:
    from ._otel import instrument_meter
    from ._prometheus import PrometheusCollector
else:

    def __getattr__(name: str) -> object:
        # Each exporter imports its library (prometheus_client, the
        # OpenTelemetry API) only when it is asked for.
        if name == "PrometheusCollector":
            from ._prometheus import PrometheusCollector  # noqa: PLC0415 - deferred on purpose

            globals()[name] = PrometheusCollector
            return PrometheusCollector
        if name == "instrument_meter":
            from ._otel import instrument_meter  # noqa: PLC0415 - deferred on purpose

            globals()[name] = instrument_meter
            return instrument_meter
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__} - {"TYPE_CHECKING"})
