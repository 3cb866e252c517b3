"""Point 15: configuration from arguments and from the environment."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest

from keyed_dispatch import ConfigError, DispatcherConfig, KeyedDispatcher


def test_defaults() -> None:
    config = DispatcherConfig.from_env({})
    assert config == DispatcherConfig()
    assert config.max_workers == min(32, (os.cpu_count() or 1) + 4)
    assert (config.max_shards, config.submit_timeout, config.start_timeout) == (1000, 30.0, None)
    assert (config.max_pending, config.wait_warning, config.idle_timeout) == (None, 5.0, 60.0)


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DispatcherConfig().max_workers = 3  # type: ignore[misc]


def test_every_variable_is_read() -> None:
    config = DispatcherConfig.from_env(
        {
            "KEYED_DISPATCH_MAX_WORKERS": "7",
            "KEYED_DISPATCH_MAX_SHARDS": "123",
            "KEYED_DISPATCH_SUBMIT_TIMEOUT": "2.5",
            "KEYED_DISPATCH_START_TIMEOUT": "0.75",
            "KEYED_DISPATCH_MAX_PENDING": "99",
            "KEYED_DISPATCH_WAIT_WARNING": "1",
            "KEYED_DISPATCH_IDLE_TIMEOUT": " 4 ",
        }
    )
    assert config == DispatcherConfig(
        max_workers=7,
        max_shards=123,
        submit_timeout=2.5,
        start_timeout=0.75,
        max_pending=99,
        wait_warning=1.0,
        idle_timeout=4.0,
    )


def test_lock_manager_variables_are_fallbacks() -> None:
    lock_manager = {"MAX_WEBHOOK_LOCKS": "500", "WEBHOOK_LOCK_TIMEOUT": "12"}
    config = DispatcherConfig.from_env(lock_manager)
    assert (config.max_shards, config.submit_timeout) == (500, 12.0)
    # Our own variables win over the lock-manager design's.
    ours = {**lock_manager, "KEYED_DISPATCH_MAX_SHARDS": "40", "KEYED_DISPATCH_SUBMIT_TIMEOUT": "3"}
    config = DispatcherConfig.from_env(ours)
    assert (config.max_shards, config.submit_timeout) == (40, 3.0)
    # An empty variable counts as unset, so the fallback applies.
    config = DispatcherConfig.from_env({**lock_manager, "KEYED_DISPATCH_MAX_SHARDS": ""})
    assert config.max_shards == 500


def test_none_and_inf_words() -> None:
    config = DispatcherConfig.from_env(
        {
            "KEYED_DISPATCH_START_TIMEOUT": "None",
            "KEYED_DISPATCH_MAX_PENDING": "none",
            "KEYED_DISPATCH_WAIT_WARNING": "NONE",
            "KEYED_DISPATCH_SUBMIT_TIMEOUT": "inf",
        }
    )
    assert (config.start_timeout, config.max_pending, config.wait_warning) == (None, None, None)
    assert config.submit_timeout == math.inf


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYED_DISPATCH_MAX_WORKERS", "3")
    monkeypatch.setenv("WEBHOOK_LOCK_TIMEOUT", "9")
    assert DispatcherConfig.from_env().max_workers == 3
    d = KeyedDispatcher()
    try:
        assert (d.config.max_workers, d.config.submit_timeout) == (3, 9.0)
    finally:
        d.shutdown()


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYED_DISPATCH_MAX_WORKERS", "3")
    monkeypatch.setenv("KEYED_DISPATCH_START_TIMEOUT", "5")
    d = KeyedDispatcher(5, max_shards=9, submit_timeout=1, max_pending=4, wait_warning=2)
    try:
        config = d.config
        assert (config.max_workers, config.max_shards, config.submit_timeout) == (5, 9, 1)
        assert (config.max_pending, config.wait_warning, config.start_timeout) == (4, 2, 5.0)
        assert d.stats().max_workers == 5
    finally:
        d.shutdown()


def test_explicit_config_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYED_DISPATCH_MAX_WORKERS", "not a number")
    d = KeyedDispatcher(config=DispatcherConfig(max_workers=2), start_timeout=1)
    try:
        assert (d.config.max_workers, d.config.start_timeout) == (2, 1)
    finally:
        d.shutdown()


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("KEYED_DISPATCH_MAX_WORKERS", "abc", "whole number"),
        ("KEYED_DISPATCH_MAX_WORKERS", "0", ">= 1"),
        ("KEYED_DISPATCH_MAX_WORKERS", "2.5", "whole number"),
        ("KEYED_DISPATCH_MAX_SHARDS", "-1", ">= 1"),
        ("MAX_WEBHOOK_LOCKS", "lots", "whole number"),
        ("KEYED_DISPATCH_SUBMIT_TIMEOUT", "-5", ">= 0"),
        ("KEYED_DISPATCH_SUBMIT_TIMEOUT", "nan", "NaN"),
        ("WEBHOOK_LOCK_TIMEOUT", "30s", "number of seconds"),
        ("KEYED_DISPATCH_START_TIMEOUT", "inf", "finite"),
        ("KEYED_DISPATCH_START_TIMEOUT", "soon", "number of seconds"),
        ("KEYED_DISPATCH_MAX_PENDING", "0", ">= 1"),
        ("KEYED_DISPATCH_WAIT_WARNING", "-0.1", ">= 0"),
        ("KEYED_DISPATCH_IDLE_TIMEOUT", "0", "> 0"),
        ("KEYED_DISPATCH_IDLE_TIMEOUT", "none", "number of seconds"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(variable: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        DispatcherConfig.from_env({variable: value})
    message = str(info.value)
    assert variable in message
    assert repr(value) in message
    assert reason in message
    assert isinstance(info.value, ValueError)


def test_bad_environment_fails_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYED_DISPATCH_MAX_SHARDS", "many")
    with pytest.raises(ConfigError, match="KEYED_DISPATCH_MAX_SHARDS='many'"):
        KeyedDispatcher()


@pytest.mark.parametrize("name", ["start_timeout", "wait_warning", "idle_timeout"])
def test_infinite_optional_timeouts_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="finite"):
        DispatcherConfig(**{name: math.inf})  # type: ignore[arg-type]


def test_infinite_submit_timeout_is_allowed() -> None:
    assert DispatcherConfig(submit_timeout=math.inf).submit_timeout == math.inf


def test_zero_idle_timeout() -> None:
    with pytest.raises(ConfigError, match="idle_timeout must be > 0"):
        DispatcherConfig(idle_timeout=0)
