"""Shared helpers: key text, function names, JSON payloads, errors, connections."""

from __future__ import annotations

import importlib
import json
import math
import re
import reprlib
from collections.abc import Callable, Hashable
from typing import Any

import psycopg

from keyed_dispatch._errors import KeyedDispatchError

__all__ = [
    "MAX_KEY_BYTES",
    "DatabaseUnavailable",
    "JobFailed",
    "check_function_name",
    "connect",
    "dump_json",
    "error_name",
    "error_names",
    "json_text",
    "key_text",
    "key_value",
    "resolve_function",
    "storable_text",
]

_FUNCTION_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")

# json.dumps() with arguments builds an encoder at every call; these are
# built once (the same output).
#: ``json.dumps(value, ensure_ascii=False)``: a str as a JSON string.
json_text = json.JSONEncoder(ensure_ascii=False).encode
_strict_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False).encode


class DatabaseUnavailable(KeyedDispatchError, ConnectionError):  # named like the core's errors
    """The database could not be reached (bad DSN, server down, connection lost).

    Raised by ``submit*``, ``install_schema`` and ``stats`` once a
    statement lost its connection and no new one could be made or kept.
    Only then may a submit that raises it have queued its job (its commit
    went unacknowledged); a submit that could not connect wrote nothing.
    """


class JobFailed(KeyedDispatchError, RuntimeError):  # named like the core's errors
    """A job raised in the worker that ran it; set on the submitter's future.

    A job retried in place (``Retry``) fails with the last attempt's error;
    each earlier attempt's is chained as ``__context__`` of the next one.

    Attributes:
        job_id: the job's id in the database.
        error_type: the qualified name of the exception class raised by the
            job (``"ValueError"``, ``"myapp.errors.ExchangeDown"``).
        message: ``str()`` of that exception.
        attempt: the attempt that raised it (1 for the first; 0 if unknown).
    """

    def __init__(self, job_id: int, error_type: str, message: str, attempt: int = 0) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.attempt = attempt


#: The longest key text accepted, in UTF-8 bytes: far below what the key
#: index can hold (a btree row is at most about 2.7 kB), far above any
#: sensible key.
MAX_KEY_BYTES = 1024

_MAX_KEY_DEPTH = 32


def key_text(key: Hashable) -> str:
    """The text a key is stored under: its canonical JSON, the same in every process.

    Two keys are the same key in PostgreSQL exactly when they are the same
    key in-process, that is when they compare equal (``==``, with equal
    hashes): equal keys give equal texts, unequal keys different texts.

    * ``str``: a JSON string (``"BTC/USDT"`` -> ``"BTC/USDT"`` with its
      quotes), control characters escaped, other characters as they are.
    * ``int``: a JSON number (``7`` -> ``7``), so ``7`` and ``"7"`` stay
      two keys, as in-process. ``bool`` is an ``int``: ``True == 1``, so
      ``True`` is stored as ``1`` and ``False`` as ``0``.
    * ``float``: an integral value as that int (``1.0 == 1`` -> ``1``,
      ``-0.0`` -> ``0``), any other value as its shortest round-trip text
      (``0.5``, ``1e-05``). NaN and infinities are refused (ValueError).
    * ``None``: ``null``.
    * ``tuple``, named tuples included: a JSON array of its items' texts,
      recursively, without spaces. A :class:`~keyed_dispatch.WebhookKey` is
      a tuple, so ``webhook_key(1, "BTC/USDT")`` and ``(1, "BTC/USDT")`` are
      one key, ``[1,"BTC/USDT"]``.
    * Subclasses of these count as their base type, unless they redefine
      ``__eq__`` or ``__hash__``.

    Log lines show ``str(key)`` (``strategy_1_symbol_BTC/USDT``);
    :func:`key_value` turns a stored text back into a key (tuples come back
    as plain tuples, equal to the key submitted).

    Raises:
        TypeError: a key (or a tuple item) of any other type, named in the
            message; convert it to one of the above the same way in every
            process.
        ValueError: a float NaN or infinity, a string holding a lone
            surrogate (not UTF-8), tuples nested more than 32 deep, or a
            text longer than :data:`MAX_KEY_BYTES`.
    """
    if type(key) is str:  # the common case, first
        text = json_text(key)
    else:
        parts: list[str] = []
        _encode(key, key, parts, 0)
        text = "".join(parts)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise ValueError(f"key {reprlib.repr(key)} holds a lone surrogate: it is not UTF-8 text") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(
            f"key text is {size} bytes, more than the {MAX_KEY_BYTES} a key may take: {reprlib.repr(key)}"
        )
    return text


def _faithful(kind: type, base: type) -> bool:
    """Whether instances of ``kind`` (a subclass of ``base``) compare and hash as ``base``'s."""
    return kind is base or (kind.__eq__ is base.__eq__ and kind.__hash__ is base.__hash__)


def _encode(part: object, key: Hashable, out: list[str], depth: int) -> None:
    """Append the canonical text of ``part`` (of ``key``) to ``out``."""
    kind = type(part)
    if isinstance(part, str) and _faithful(kind, str):
        out.append(json_text(str.__str__(part)))
    elif isinstance(part, int) and _faithful(kind, int):
        if part.bit_length() > 4 * MAX_KEY_BYTES:  # str() of it would be long, or refused
            raise ValueError(f"key text is more than the {MAX_KEY_BYTES} bytes a key may take: int too large")
        out.append(int.__repr__(part))
    elif isinstance(part, float) and _faithful(kind, float):
        if not math.isfinite(part):
            raise ValueError(
                f"a distributed key cannot hold the float {part!r}: NaN is not equal to itself, "
                "infinities have no JSON form"
            )
        out.append(int.__repr__(int(part)) if part.is_integer() else float.__repr__(part))
    elif part is None:
        out.append("null")
    elif isinstance(part, tuple) and _faithful(kind, tuple):
        if depth >= _MAX_KEY_DEPTH:
            raise ValueError(f"key tuples may nest at most {_MAX_KEY_DEPTH} deep: {reprlib.repr(key)}")
        out.append("[")
        for index, item in enumerate(part):
            if index:
                out.append(",")
            _encode(item, key, out, depth + 1)
        out.append("]")
    else:
        where = "" if part is key else f" in key {reprlib.repr(key)}"
        raise TypeError(
            "distributed keys are str, int, float, None or tuples of them (a WebhookKey is a tuple), "
            f"got {kind.__name__}: {part!r}{where}; convert it to one of those the same way in every process"
        )


def key_value(text: str) -> Hashable:
    """The key stored as ``text`` (see :func:`key_text`); JSON arrays become tuples.

    ``key_text(key_value(t)) == t`` for every stored text ``t``, and
    ``key_value(key_text(k)) == k`` for every key ``k`` accepted.
    """
    return _tuples(json.loads(text))


def _tuples(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value  # type: ignore[no-any-return]


def error_name(kind: type[BaseException]) -> str:
    """The qualified name of an exception class: ``ValueError``, ``myapp.errors.ExchangeDown``.

    Builtins go by their bare name. It is what a job's ``error_type`` reads
    and how a retry policy's ``on`` classes are matched across processes.
    """
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def error_names(error: BaseException) -> list[str]:
    """The names (:func:`error_name`) of ``error``'s class and its exception bases, most derived first."""
    return [error_name(kind) for kind in type(error).__mro__ if issubclass(kind, BaseException)]


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


# A NUL character in a JSON string: ``\u0000`` after an even number of backslashes.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def dump_json(value: Any, what: str) -> str:
    """``value`` as strict JSON text that PostgreSQL's ``jsonb`` accepts.

    No NaN, no Infinity, no custom types; no NUL character and no lone
    surrogate in any string (``jsonb`` refuses ``\\u0000``, UTF-8 cannot
    hold a surrogate).

    Raises:
        TypeError: ``value`` is not JSON-serializable; ``what`` names it.
        ValueError: a string in ``value`` holds a NUL or a lone surrogate.
    """
    try:
        text = _strict_json(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from None
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise ValueError(f"{what} cannot hold a NUL character (\\x00): PostgreSQL refuses it in JSON")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} cannot hold a lone surrogate: it is not UTF-8 text") from None
    return text


def storable_text(text: str) -> str:
    """``text`` with what a PostgreSQL ``text`` column refuses escaped (NUL, lone surrogates)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


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
