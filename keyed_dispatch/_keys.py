"""Key helpers: the webhook key and the text used in log lines."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import NamedTuple

__all__ = ["KeysText", "WebhookKey", "check_hashable", "key_str", "normalize_keys", "webhook_key"]


class WebhookKey(NamedTuple):
    """The key of one ``(strategy_id, symbol)`` webhook stream.

    A tuple, so it hashes and compares by value; printed in the lock-manager
    design's key format, ``strategy_1_symbol_BTC/USDT``.
    """

    strategy_id: Hashable
    symbol: Hashable

    def __str__(self) -> str:
        return f"strategy_{self.strategy_id}_symbol_{self.symbol}"


def webhook_key(strategy_id: Hashable, symbol: Hashable) -> WebhookKey:
    """Return the dispatch key of a strategy/symbol pair.

    Equal inputs give equal keys, in every process; ``str()`` of the key is
    ``strategy_{strategy_id}_symbol_{symbol}``, the key format of the
    lock-manager design and of this package's log lines.

    Raises:
        TypeError: if either part is unhashable.
    """
    key = WebhookKey(strategy_id, symbol)
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            "webhook_key parts must be hashable, got "
            f"{type(strategy_id).__name__} and {type(symbol).__name__}"
        ) from None
    return key


def normalize_keys(keys: Iterable[Hashable]) -> tuple[Hashable, ...]:
    """Return ``keys`` as a tuple without duplicates, in first-seen order.

    Raises:
        TypeError: ``keys`` is a string or not iterable, or a key is unhashable.
        ValueError: ``keys`` is empty.
    """
    if isinstance(keys, (str, bytes)):
        raise TypeError(
            f"keys must be a collection of keys, not a single {type(keys).__name__}; wrap it: [{keys!r}]"
        )
    try:
        if iter(keys) is keys:
            # A one-shot iterator: keep its items, so that an unhashable one
            # can still be named below (it used to be consumed, and the
            # error claimed an empty key set).
            keys = list(keys)
        unique = tuple(dict.fromkeys(keys))
    except TypeError:
        try:
            items = list(keys)
        except TypeError:
            raise TypeError(f"keys must be an iterable of keys, got {type(keys).__name__}") from None
        for key in items:
            check_hashable(key)
        raise
    if not unique:
        raise ValueError("a job needs at least one key; got an empty key set")
    return unique


def check_hashable(key: object) -> None:
    """Raise a TypeError naming the key's type if it cannot be a key."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"keys must be hashable, got unhashable {type(key).__name__}: {key!r}") from None


def key_str(key: object) -> str:
    """``str(key)`` for messages; a key whose ``__str__`` raises still gets a text.

    A dispatcher formats keys in log lines and errors (KeyHalted) while it
    retires jobs: a key that cannot be printed must not fail that.
    """
    try:
        return str(key)
    except Exception:  # noqa: BLE001 - any error of a user's __str__; the text says so
        return f"<{type(key).__name__} key: str() failed>"


class KeysText:
    """Lazy text of a job's keys for log lines; formatted only if emitted."""

    __slots__ = ("keys",)

    def __init__(self, keys: tuple[Hashable, ...]) -> None:
        self.keys = keys

    def __str__(self) -> str:
        if len(self.keys) == 1:
            return key_str(self.keys[0])
        return "+".join(map(key_str, self.keys))
