"""Point 16: bad input fails at the call with a clear error, never inside a worker."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from keyed_dispatch import AsyncKeyedDispatcher, ConfigError, DispatcherConfig, KeyedDispatcher
from tests.contract.conftest import MakeRunner

CONSTRUCTORS: dict[str, Callable[..., object]] = {
    "thread": KeyedDispatcher,
    "asyncio": AsyncKeyedDispatcher,
}


@pytest.mark.parametrize(
    ("key", "type_name"), [(["a"], "list"), ({"a": 1}, "dict"), ({1}, "set"), ((1, [2]), "tuple")]
)
def test_unhashable_key_names_its_type(make_runner: MakeRunner, key: Any, type_name: str) -> None:
    r = make_runner(1)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"):
        r.submit(key, print)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"):
        r.submit_multi(["ok", key], print)
    with pytest.raises(TypeError, match=f"unhashable {type_name}"), r.exclusive([key]):
        pass
    stats = r.stats()
    assert (stats.submitted, stats.active_shards) == (0, 0)


@pytest.mark.parametrize("position", [0, 1])
def test_unhashable_key_in_a_one_shot_iterator_names_its_type(make_runner: MakeRunner, position: int) -> None:
    # A generator is consumed by the first attempt; the error must still
    # name the unhashable key, not claim the key set is empty.
    r = make_runner(1)
    keys: list[Any] = ["a", "b"]
    keys.insert(position, ["unhashable"])
    with pytest.raises(TypeError, match="unhashable list"):
        r.submit_multi((key for key in keys), print)
    assert r.stats().submitted == 0


def test_iterator_of_keys_is_accepted(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    assert r.submit_multi((k for k in ["a", "b", "a"]), lambda: 3).result(timeout=10) == 3


@pytest.mark.parametrize("keys", ["ab", b"ab"])
def test_a_string_is_not_a_key_collection(make_runner: MakeRunner, keys: Any) -> None:
    r = make_runner(1)
    with pytest.raises(TypeError, match=r"collection of keys.*wrap it"):
        r.submit_multi(keys, print)
    with pytest.raises(TypeError, match="wrap it"), r.exclusive(keys):
        pass


def test_non_iterable_keys(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    with pytest.raises(TypeError, match="iterable of keys, got int"):
        r.submit_multi(5, print)  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["submit", "submit_multi"])
def test_non_callable_fn(make_runner: MakeRunner, call: str) -> None:
    # The thread runner names it fn, the asyncio runner coro_fn.
    r = make_runner(1)
    submit: Callable[..., Any] = getattr(r, call)
    with pytest.raises(TypeError, match="fn must be callable, got str"):
        submit("k" if call == "submit" else ["k"], "not a function")
    with pytest.raises(TypeError, match="fn must be callable, got NoneType"):
        submit("k" if call == "submit" else ["k"], None)
    assert r.stats().submitted == 0


def test_empty_key_set(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    with pytest.raises(ValueError, match="empty key set"):
        r.submit_multi([], print)
    with pytest.raises(ValueError, match="empty key set"), r.exclusive([]):
        pass


def test_type_error_from_a_key_comparison_propagates(make_runner: MakeRunner) -> None:
    class Incomparable:
        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            raise TypeError("keys of this kind cannot be compared")

    r = make_runner(1)
    with pytest.raises(TypeError, match="cannot be compared"):
        r.submit_multi([Incomparable(), Incomparable()], print)


# -- the constructors ----------------------------------------------------------


@pytest.mark.parametrize("name", ["submit_timeout", "start_timeout", "wait_warning"])
@pytest.mark.parametrize("value", [-1, -0.5, math.nan])
def test_negative_or_nan_timeouts(runner_kind: str, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name) as info:
        CONSTRUCTORS[runner_kind](1, config=DispatcherConfig(), **{name: value})
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(("name", "value"), [("max_shards", 0), ("max_pending", 0)])
def test_counts_below_one(runner_kind: str, name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be >= 1, got {value}"):
        CONSTRUCTORS[runner_kind](config=DispatcherConfig(), **{name: value})


@pytest.mark.parametrize("value", [0, -3])
def test_too_few_workers(runner_kind: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"max_workers must be >= 1, got {value}"):
        CONSTRUCTORS[runner_kind](value, config=DispatcherConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_shards": True}, "max_shards must be an int, got bool"),
        ({"submit_timeout": "30"}, "submit_timeout must be a number of seconds, got str"),
        ({"halt_on_error": 1}, "halt_on_error must be a bool, got int"),
    ],
)
def test_wrong_types(runner_kind: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        CONSTRUCTORS[runner_kind](config=DispatcherConfig(), **kwargs)


def test_wrong_type_of_max_workers(runner_kind: str) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int, got float"):
        CONSTRUCTORS[runner_kind](2.5, config=DispatcherConfig())
