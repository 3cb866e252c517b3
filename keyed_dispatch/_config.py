"""DispatcherConfig: validated settings, from arguments or the environment."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ._errors import ConfigError

__all__ = ["DispatcherConfig", "check_timeout", "resolve_config", "wait_seconds"]

_T = TypeVar("_T")


def _default_max_workers() -> int:
    # The same default as ThreadPoolExecutor: enough threads for I/O-bound
    # jobs, capped so a big machine does not start hundreds.
    return min(32, (os.cpu_count() or 1) + 4)


@dataclass(frozen=True)
class DispatcherConfig:
    """Settings of a dispatcher, validated at construction.

    Time values are seconds. ``math.inf`` means "no limit" for
    ``submit_timeout``; ``None`` disables ``start_timeout``, ``max_pending``
    and ``wait_warning``.

    Attributes:
        max_workers: worker threads (thread dispatcher) or concurrently
            running coroutines (asyncio dispatcher) at most.
        max_shards: keys with pending or running work at most.
        submit_timeout: how long ``submit*`` waits for room (``max_shards``,
            ``max_pending``) before raising ``SubmitTimeout``; 0 fails at once.
        start_timeout: a job not started this long after its admission never
            runs and fails with ``StartTimeout``.
        max_pending: admitted jobs that have not started, at most.
        wait_warning: a job that waited this long to start is logged at WARNING.
        idle_timeout: an idle worker thread exits after this long.

    Raises:
        ConfigError: a value is out of range or NaN (also a ``ValueError``).
        TypeError: a value has the wrong type.
    """

    max_workers: int = field(default_factory=_default_max_workers)
    max_shards: int = 1000
    submit_timeout: float = 30.0
    start_timeout: float | None = None
    max_pending: int | None = None
    wait_warning: float | None = 5.0
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        _check_int("max_workers", self.max_workers, minimum=1)
        _check_int("max_shards", self.max_shards, minimum=1)
        _check_seconds("submit_timeout", self.submit_timeout, allow_inf=True)
        if self.start_timeout is not None:
            _check_seconds("start_timeout", self.start_timeout, allow_inf=False)
        if self.max_pending is not None:
            _check_int("max_pending", self.max_pending, minimum=1)
        if self.wait_warning is not None:
            _check_seconds("wait_warning", self.wait_warning, allow_inf=False)
        _check_seconds("idle_timeout", self.idle_timeout, allow_inf=False)
        if self.idle_timeout == 0:
            raise ConfigError("idle_timeout must be > 0, got 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DispatcherConfig:
        """Build a config from ``KEYED_DISPATCH_*`` variables.

        ==================================  ===============  ==================
        variable                            field            default
        ==================================  ===============  ==================
        ``KEYED_DISPATCH_MAX_WORKERS``      max_workers      min(32, cpus + 4)
        ``KEYED_DISPATCH_MAX_SHARDS``       max_shards       1000
        ``KEYED_DISPATCH_SUBMIT_TIMEOUT``   submit_timeout   30
        ``KEYED_DISPATCH_START_TIMEOUT``    start_timeout    none
        ``KEYED_DISPATCH_MAX_PENDING``      max_pending      none
        ``KEYED_DISPATCH_WAIT_WARNING``     wait_warning     5
        ``KEYED_DISPATCH_IDLE_TIMEOUT``     idle_timeout     60
        ==================================  ===============  ==================

        The lock-manager design's ``MAX_WEBHOOK_LOCKS`` and ``WEBHOOK_LOCK_TIMEOUT``
        are read when the matching ``KEYED_DISPATCH_*`` variable is unset, so
        an existing deployment keeps its settings. An empty variable counts
        as unset; ``none`` clears an optional value, ``inf`` lifts the submit
        timeout.

        Raises:
            ConfigError: a value does not parse or is out of range; the
                message names the variable and the value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def read(name: str, fallback: str | None, parse: Callable[[str, str], _T]) -> None:
            for var in (f"KEYED_DISPATCH_{name.upper()}", fallback):
                if var is None:
                    continue
                raw = env.get(var, "").strip()
                if raw:
                    try:
                        values[name] = parse(var, raw)
                        cls._validate_one(name, values[name])
                    except ConfigError as exc:
                        raise ConfigError(f"{var}={raw!r}: {exc}") from None
                    return

        read("max_workers", None, _parse_int)
        read("max_shards", "MAX_WEBHOOK_LOCKS", _parse_int)
        read("submit_timeout", "WEBHOOK_LOCK_TIMEOUT", _parse_seconds)
        read("start_timeout", None, _parse_optional(_parse_seconds))
        read("max_pending", None, _parse_optional(_parse_int))
        read("wait_warning", None, _parse_optional(_parse_seconds))
        read("idle_timeout", None, _parse_seconds)
        return cls(**values)

    @classmethod
    def _validate_one(cls, name: str, value: Any) -> None:
        # A config with just this field changed runs __post_init__ on it alone,
        # so the error can name the one variable that caused it.
        replace(_DEFAULTS, **{name: value})


def resolve_config(config: DispatcherConfig | None, **settings: Any) -> DispatcherConfig:
    """``config`` (the environment's when None) with the non-None ``settings`` set.

    The constructors of both dispatchers take their settings this way:
    arguments left as None keep the base value.

    Raises:
        ConfigError, TypeError: as DispatcherConfig.
    """
    base = config if config is not None else DispatcherConfig.from_env()
    overrides = {name: value for name, value in settings.items() if value is not None}
    return replace(base, **overrides) if overrides else base


def check_timeout(name: str, value: object) -> None:
    """Validate a per-call timeout: None (no limit) or seconds >= 0.

    Raises:
        TypeError: not a number (bools are refused).
        ValueError: negative or NaN.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value}")


def wait_seconds(seconds: float | None) -> float | None:
    """``seconds`` as a timeout the threading module can wait for; None: no limit.

    Any non-negative number of seconds is a valid setting, but ``threading``
    refuses to wait longer than ``threading.TIMEOUT_MAX`` (about 292 years)
    with OverflowError, which would surface inside a worker. A longer wait,
    ``math.inf`` included, is the same as no limit.
    """
    if seconds is None or seconds >= threading.TIMEOUT_MAX:
        return None
    return seconds


def _parse_int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError("expected a whole number") from None


def _parse_seconds(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError("expected a number of seconds") from None


def _parse_optional(parse: Callable[[str, str], _T]) -> Callable[[str, str], _T | None]:
    def parse_optional(var: str, raw: str) -> _T | None:
        if raw.lower() == "none":
            return None
        return parse(var, raw)

    return parse_optional


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _check_seconds(name: str, value: object, *, allow_inf: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    if math.isnan(value):
        raise ConfigError(f"{name} must be a number of seconds, got NaN")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    if math.isinf(value) and not allow_inf:
        raise ConfigError(f"{name} must be finite (use None for no limit), got {value}")


_DEFAULTS = DispatcherConfig()
