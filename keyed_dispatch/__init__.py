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
)
from ._histogram import HistogramSnapshot
from ._keys import WebhookKey, webhook_key
from ._stats import DispatcherStats
from ._thread import KeyedDispatcher, KeyedFuture, KeyExecutor

__version__ = "0.1.0"

__all__ = [
    "AsyncKeyedDispatcher",
    "CommitTracker",
    "ConfigError",
    "DispatcherClosed",
    "DispatcherConfig",
    "DispatcherStats",
    "HistogramSnapshot",
    "KeyExecutor",
    "KeyHalted",
    "KeyedDispatchError",
    "KeyedDispatcher",
    "KeyedFuture",
    "ShardsExhausted",
    "StartTimeout",
    "SubmitTimeout",
    "WebhookKey",
    "webhook_key",
]


if TYPE_CHECKING:
    from ._asyncio import AsyncKeyedDispatcher
else:

    def __getattr__(name: str) -> object:
        # AsyncKeyedDispatcher is imported on first use: it imports asyncio
        # (about 80 ms), which a thread-only program need not pay for.
        if name == "AsyncKeyedDispatcher":
            from ._asyncio import AsyncKeyedDispatcher  # noqa: PLC0415 - deferred on purpose

            globals()[name] = AsyncKeyedDispatcher
            return AsyncKeyedDispatcher
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__} - {"TYPE_CHECKING"})
