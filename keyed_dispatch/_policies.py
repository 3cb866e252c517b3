"""Per-job policies: ordered retries, supersede, per-submission options."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadLetter", "JobContext", "JobOptions", "Retry"]

_UNSET: Any = object()


def _check_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")


@dataclass(frozen=True)
class Retry:
    """Retry a failed job in place: it keeps its turn on every one of its keys.

    A failed attempt that this policy retries leaves the job at the head of
    its keys' queues: later jobs of those keys wait for it, other keys are
    not affected. No worker is held during the backoff; the retry runs on
    whichever worker is free when the backoff ends. The job's future
    resolves once, with the result of the attempt that succeeded or with the
    last attempt's exception (earlier failures chained as its
    ``__context__``). ``current_job().attempt`` tells a job which attempt
    it is.

    Args:
        attempts: attempts in all, the first included (``Retry(1)`` never retries).
        backoff: seconds before the first retry; each next one doubles.
        max_backoff: the cap on one backoff, in seconds.
        jitter: each backoff is scaled by a random factor in ``[1 - jitter,
            1 + jitter]`` (0 to 1), so that retries of many keys spread out.
        on: which exceptions are retried: exception classes (a tuple, or one
            class), or a predicate ``on(exc) -> bool``. Default: any
            ``Exception`` (not ``BaseException`` such as KeyboardInterrupt).
        deadline: seconds after the job's first start past which no retry is
            started; None: no total bound.

    Raises:
        TypeError, ValueError: a value is out of range (raised here).
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: float = 0.1
    on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (Exception,)
    deadline: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {type(self.attempts).__name__}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        _check_seconds("backoff", self.backoff)
        _check_seconds("max_backoff", self.max_backoff)
        _check_seconds("deadline", self.deadline, allow_none=True)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)):
            raise TypeError(f"jitter must be a number from 0 to 1, got {type(self.jitter).__name__}")
        if not 0 <= self.jitter <= 1:  # also refuses NaN
            raise ValueError(f"jitter must be from 0 to 1, got {self.jitter}")
        on = self.on
        if isinstance(on, type) and issubclass(on, BaseException):
            object.__setattr__(self, "on", (on,))
        elif isinstance(on, tuple):
            if not on or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in on):
                raise TypeError(f"on must be exception classes or a predicate, got {on!r}")
        elif not callable(on):
            raise TypeError(f"on must be exception classes or a predicate, got {type(on).__name__}")

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is one this policy retries (attempts aside)."""
        on = self.on
        if isinstance(on, tuple):
            return isinstance(error, on)
        return bool(on(error))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        base = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 64))
        if self.jitter:
            base *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)


@dataclass(frozen=True)
class JobOptions:
    """The options of one submission (see ``options()``); None fields keep the dispatcher's."""

    retry: Retry | None = None
    supersede: bool = False
    start_timeout: float | None = _UNSET

    def __post_init__(self) -> None:
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise TypeError(f"retry must be a Retry or None, got {type(self.retry).__name__}")
        if not isinstance(self.supersede, bool):
            raise TypeError(f"supersede must be a bool, got {type(self.supersede).__name__}")
        if self.start_timeout is not _UNSET:
            _check_seconds("start_timeout", self.start_timeout, allow_none=True)

    def start_timeout_or(self, default: float | None) -> float | None:
        """This submission's start timeout, or ``default`` when it sets none."""
        return default if self.start_timeout is _UNSET else self.start_timeout


@dataclass(frozen=True)
class DeadLetter:
    """A job whose retries are exhausted, as given to the ``dead_letter`` hook.

    Attributes:
        keys: the job's keys.
        fn: its function; ``args`` and ``kwargs`` its arguments.
        attempts: how many attempts ran.
        error: the last attempt's exception (earlier ones chained as ``__context__``).
    """

    keys: tuple[Hashable, ...]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(repr=False)
    attempts: int
    error: BaseException


@dataclass(frozen=True)
class JobContext:
    """What a running job may know of itself (``current_job()``).

    Attributes:
        job_id: stable for the job across its attempts, unique in the
            process: an idempotency key for its side effects.
        keys: the job's keys.
        attempt: 1 for the first attempt, 2 for the first retry, ...
    """

    job_id: str
    keys: tuple[Hashable, ...]
    attempt: int
