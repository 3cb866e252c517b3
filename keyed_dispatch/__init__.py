"""keyed_dispatch: run jobs in order per key, in parallel across keys.

Jobs submitted with the same key run one at a time, in the order they were
submitted; jobs with different keys run concurrently on a thread pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._commits import CommitTracker
from ._config import DispatcherConfig
from ._errors import (
    ConfigError,
    DispatcherClosed,
    KeyedDispatchError,
    KeyHalted,
    ShardsExhausted,
    StartTimeout,
    SubmitTimeout,
    Superseded,
)
from ._histogram import HistogramSnapshot
from ._keys import WebhookKey, webhook_key
from ._policies import DeadLetter, JobContext, Retry
from ._stats import DispatcherStats, KeyInfo
from ._thread import KeyedDispatcher, KeyedFuture, KeyedOptions, KeyExecutor

__version__ = "0.1.0"

__all__ = [
    "AsyncKeyedDispatcher",
    "AsyncKeyedOptions",
    "CommitTracker",
    "ConfigError",
    "DeadLetter",
    "DispatcherClosed",
    "DispatcherConfig",
    "DispatcherStats",
    "HistogramSnapshot",
    "JobContext",
    "KeyExecutor",
    "KeyHalted",
    "KeyInfo",
    "KeyedDispatchError",
    "KeyedDispatcher",
    "KeyedFuture",
    "KeyedOptions",
    "Retry",
    "ShardsExhausted",
    "StartTimeout",
    "SubmitTimeout",
    "Superseded",
    "WebhookKey",
    "webhook_key",
]


if TYPE_CHECKING:
    from ._asyncio import AsyncKeyedDispatcher, AsyncKeyedOptions
else:

    def __getattr__(name: str) -> object:
        # The asyncio runner is imported on first use: it imports asyncio
        # (about 80 ms), which a thread-only program need not pay for.
        if name in ("AsyncKeyedDispatcher", "AsyncKeyedOptions"):
            from . import _asyncio  # noqa: PLC0415 - deferred on purpose

            value = globals()[name] = getattr(_asyncio, name)
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__} - {"TYPE_CHECKING"})
