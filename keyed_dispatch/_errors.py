"""The exceptions raised by keyed_dispatch.

Every error derives from :class:`KeyedDispatchError` and also from the builtin
it resembles, so code written against ``TimeoutError`` or ``RuntimeError``
keeps working.
"""

from __future__ import annotations

from collections.abc import Hashable

from ._keys import key_str

__all__ = [
    "ConfigError",
    "DispatcherClosed",
    "KeyHalted",
    "KeyedDispatchError",
    "ShardsExhausted",
    "StartTimeout",
    "SubmitTimeout",
    "Superseded",
]


class KeyedDispatchError(Exception):
    """Base class of every error this package raises on purpose."""


class SubmitTimeout(KeyedDispatchError, TimeoutError):
    """Admission did not get room within ``submit_timeout``.

    Raised by ``submit*`` when ``max_pending`` is reached and no job leaves
    the queue in time. A submit that raises this leaves no trace: nothing was
    queued and no shard was created.
    """


class ShardsExhausted(SubmitTimeout):
    """A new key needed a shard and ``max_shards`` shards stayed live.

    What the lock-manager design called "lock pool exhausted". Keys that
    already have a live shard are never refused for this reason.
    """


class StartTimeout(KeyedDispatchError, TimeoutError):
    """A job (or an ``exclusive`` block) did not start in time.

    Set on the future of a job that was not started within ``start_timeout``
    seconds of its admission; raised by ``exclusive`` when its turn does not
    come within its ``timeout``. The job never runs.
    """


class DispatcherClosed(KeyedDispatchError, RuntimeError):
    """The dispatcher (or an executor view of it) no longer admits work."""


class KeyHalted(KeyedDispatchError, RuntimeError):
    """A key was halted by a failed job (``halt_on_error=True``).

    The exception that halted the key is chained as ``__cause__``; the key
    stays halted until ``resume(key)``.
    """

    def __init__(self, key: Hashable) -> None:
        super().__init__(f"key {key_str(key)} is halted by an earlier failure; call resume(key) to lift it")
        self.key = key


class Superseded(KeyedDispatchError):
    """A later job submitted with ``supersede`` replaced this one before it started.

    Set on the future of the superseded job, which never runs. ``keys`` are
    its keys.
    """

    def __init__(self, keys: tuple[Hashable, ...]) -> None:
        text = "+".join(key_str(key) for key in keys)
        super().__init__(f"the job for {text} was superseded by a later job before it started")
        self.keys = keys


class ConfigError(KeyedDispatchError, ValueError):
    """A configuration value (often from the environment) is unusable."""
