"""Shared helpers: key text, function names, JSON payloads, errors, connections."""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import psycopg

from keyed_dispatch._errors import KeyedDispatchError
from keyed_dispatch._keys import WebhookKey, normalize_keys

__all__ = [
    "DatabaseUnavailable",
    "JobFailed",
    "check_function_name",
    "connect",
    "dump_json",
    "key_text",
    "keys_text",
    "resolve_function",
]

_FUNCTION_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


class DatabaseUnavailable(KeyedDispatchError, ConnectionError):  # named like the core's errors
    """The database could not be reached (bad DSN, server down, connection lost).

    Raised by ``submit*``, ``install_schema`` and ``stats``; a submit that
    raises it wrote nothing.
    """


class JobFailed(KeyedDispatchError, RuntimeError):  # named like the core's errors
    """A job raised in the worker that ran it; set on the submitter's future.

    Attributes:
        job_id: the job's id in the database.
        error_type: the qualified name of the exception class raised by the
            job (``"ValueError"``, ``"myapp.errors.ExchangeDown"``).
        message: ``str()`` of that exception.
    """

    def __init__(self, job_id: int, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message


def key_text(key: Hashable) -> str:
    """The text a key is stored under; the same in every process.

    ``str`` keys are themselves; ``int`` keys their decimal text (so ``7``
    and ``"7"`` are the same key); a :class:`~keyed_dispatch.WebhookKey` is
    ``strategy_{id}_symbol_{symbol}``, as it prints; a tuple of those
    is its JSON array text (``(1, "BTC/USDT")`` -> ``[1, "BTC/USDT"]``).

    Raises:
        TypeError: any other type; convert it to text yourself, in the same
            way in every process.
    """
    if isinstance(key, str):
        return key
    if isinstance(key, WebhookKey):
        return str(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    if isinstance(key, tuple) and all(
        isinstance(part, str) or (isinstance(part, int) and not isinstance(part, bool)) for part in key
    ):
        return json.dumps(list(key), ensure_ascii=False)
    raise TypeError(
        "distributed keys must be str, int, WebhookKey or a tuple of str/int, got "
        f"{type(key).__name__}: {key!r}; convert it to text the same way in every process"
    )


def keys_text(keys: Iterable[Hashable]) -> list[str]:
    """Normalize a key collection to distinct texts, in first-seen order."""
    return list(dict.fromkeys(key_text(key) for key in normalize_keys(keys)))


def check_function_name(name: object) -> str:
    """Return ``name`` if it reads ``module:function``, else raise."""
    if not isinstance(name, str):
        raise TypeError(
            "a distributed job names its function as 'module:function' text, "
            f"got {type(name).__name__}: {name!r}"
        )
    if not _FUNCTION_NAME.match(name):
        raise ValueError(
            f"function must be 'module:function' (e.g. 'myapp.tasks:place_orders'), got {name!r}"
        )
    return name


def resolve_function(name: str) -> Callable[..., Any]:
    """Import ``module:function`` (the part after ``:`` may be dotted).

    Raises:
        ValueError: the name is malformed.
        ImportError: the module cannot be imported or lacks the attribute.
        TypeError: the attribute is not callable.
    """
    module_name, _, qualname = check_function_name(name).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} of job function {name!r}: {exc}") from exc
    missing = object()
    for part in qualname.split("."):
        target = getattr(target, part, missing)
        if target is missing:
            raise ImportError(f"module {module_name!r} has no attribute {qualname!r} (job function {name!r})")
    if not callable(target):
        raise TypeError(f"job function {name!r} is not callable: {type(target).__name__}")
    return target  # type: ignore[no-any-return]


def dump_json(value: Any, what: str) -> str:
    """``value`` as strict JSON text (no NaN, no Infinity, no custom types).

    Raises:
        TypeError: ``value`` is not JSON-serializable; ``what`` names it.
    """
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from None


def connect(dsn: str, *, application_name: str, timeout: float | None = None) -> psycopg.Connection[Any]:
    """An autocommit connection; every SQL function call is its own transaction.

    Raises:
        DatabaseUnavailable: the connection failed; the message names the
            DSN's target (without the password) and the reason.
    """
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": application_name}
    if timeout is not None and math.isfinite(timeout):
        # libpq takes whole seconds and treats 1 as 2.
        kwargs["connect_timeout"] = max(2, math.ceil(timeout))
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_describe(dsn)}): {exc}".strip()) from exc


def _describe(dsn: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "unparsable DSN"
    info.pop("password", None)
    return " ".join(f"{name}={value}" for name, value in sorted(info.items())) or "default target"
