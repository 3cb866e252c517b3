"""Point 16: bad input fails at the call with a clear error, never inside a worker."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from keyed_dispatch import ConfigError, DispatcherConfig, KeyedDispatcher
from tests.helpers import MakeDispatcher


@pytest.mark.parametrize(
    ("key", "type_name"), [(["a"], "list"), ({"a": 1}, "dict"), ({1}, "set"), ((1, [2]), "tuple")]
)
def test_unhashable_key_names_its_type(make_dispatcher: MakeDispatcher, key: Any, type_name: str) -> None:
    d = make_dispatcher(1)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"):
        d.submit(key, print)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"):
        d.submit_multi(["ok", key], print)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"):
        d.executor(key)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"), d.exclusive([key]):
        pass
    stats = d.stats()
    assert (stats.submitted, stats.active_shards) == (0, 0)


@pytest.mark.parametrize("position", [0, 1])
def test_unhashable_key_in_a_one_shot_iterator_names_its_type(
    make_dispatcher: MakeDispatcher, position: int
) -> None:
    # A generator is consumed by the first attempt; the error must still
    # name the unhashable key, not claim the key set is empty.
    d = make_dispatcher(1)
    keys: list[Any] = ["a", "b"]
    keys.insert(position, ["unhashable"])
    with pytest.raises(TypeError, match="unhashable list"):
        d.submit_multi((key for key in keys), print)
    assert d.stats().submitted == 0


def test_iterator_of_keys_is_accepted(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    assert d.submit_multi((k for k in ["a", "b", "a"]), lambda: 3).result(timeout=10) == 3


@pytest.mark.parametrize("keys", ["ab", b"ab"])
def test_a_string_is_not_a_key_collection(make_dispatcher: MakeDispatcher, keys: Any) -> None:
    d = make_dispatcher(1)
    with pytest.raises(TypeError, match="wrap it"):
        d.submit_multi(keys, print)


def test_non_iterable_keys(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    with pytest.raises(TypeError, match="iterable of keys, got int"):
        d.submit_multi(5, print)  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["submit", "submit_multi"])
def test_non_callable_fn(make_dispatcher: MakeDispatcher, call: str) -> None:
    d = make_dispatcher(1)
    submit: Callable[..., Any] = getattr(d, call)
    with pytest.raises(TypeError, match="fn must be callable, got str"):
        submit("k" if call == "submit" else ["k"], "not a function")
    with pytest.raises(TypeError, match="fn must be callable, got NoneType"):
        submit("k" if call == "submit" else ["k"], None)
    assert d.stats().submitted == 0


def test_empty_key_set(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    with pytest.raises(ValueError, match="empty key set"):
        d.submit_multi([], print)
    with pytest.raises(ValueError, match="empty key set"), d.exclusive([]):
        pass


@pytest.mark.parametrize("name", ["submit_timeout", "start_timeout", "wait_warning"])
@pytest.mark.parametrize("value", [-1, -0.5, math.nan])
def test_negative_or_nan_timeouts(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name) as info:
        KeyedDispatcher(1, config=DispatcherConfig(), **{name: value})  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("name", ["start_timeout", "wait_warning", "idle_timeout"])
def test_infinite_optional_timeouts_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="finite"):
        DispatcherConfig(**{name: math.inf})  # type: ignore[arg-type]


def test_infinite_submit_timeout_is_allowed() -> None:
    assert DispatcherConfig(submit_timeout=math.inf).submit_timeout == math.inf


@pytest.mark.parametrize(
    ("name", "value"), [("max_workers", 0), ("max_workers", -3), ("max_shards", 0), ("max_pending", 0)]
)
def test_counts_below_one(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be >= 1, got {value}"):
        KeyedDispatcher(config=DispatcherConfig(), **{name: value})  # type: ignore[arg-type]


def test_zero_idle_timeout() -> None:
    with pytest.raises(ConfigError, match="idle_timeout must be > 0"):
        DispatcherConfig(idle_timeout=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 2.5}, "max_workers must be an int, got float"),
        ({"max_shards": True}, "max_shards must be an int, got bool"),
        ({"submit_timeout": "30"}, "submit_timeout must be a number of seconds, got str"),
        ({"halt_on_error": 1}, "halt_on_error must be a bool, got int"),
        ({"name": 3}, "name must be a str, got int"),
    ],
)
def test_wrong_types(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        KeyedDispatcher(config=DispatcherConfig(), **kwargs)


def test_type_error_from_a_key_comparison_propagates(make_dispatcher: MakeDispatcher) -> None:
    class Incomparable:
        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            raise TypeError("keys of this kind cannot be compared")

    d = make_dispatcher(1)
    with pytest.raises(TypeError, match="cannot be compared"):
        d.submit_multi([Incomparable(), Incomparable()], print)
