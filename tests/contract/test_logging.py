"""Point 13: log lines on the ``keyed_dispatch`` logger, lazily formatted."""

from __future__ import annotations

import logging
import re

import pytest

from keyed_dispatch import ShardsExhausted, webhook_key
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT

BTC = webhook_key(1, "BTC/USDT")


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "keyed_dispatch" and r.levelno == level]


def test_debug_line_on_start(make_runner: MakeRunner, caplog: pytest.LogCaptureFixture) -> None:
    r = make_runner(2, wait_warning=None)
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        r.submit(BTC, lambda: None).result(timeout=WAIT)
        r.submit_multi([BTC, webhook_key(1, "ETH/USDT")], lambda: None).result(timeout=WAIT)
        with r.exclusive([BTC]):
            pass
    lines = messages(caplog, logging.DEBUG)
    assert len(lines) == 3
    assert re.fullmatch(r"started job for strategy_1_symbol_BTC/USDT \(waited \d+\.\d\ds\)", lines[0])
    assert re.fullmatch(
        r"started job for strategy_1_symbol_BTC/USDT\+strategy_1_symbol_ETH/USDT \(waited \d+\.\d\ds\)",
        lines[1],
    )
    assert re.fullmatch(r"started job for strategy_1_symbol_BTC/USDT \(waited \d+\.\d\ds\)", lines[2])
    assert messages(caplog, logging.WARNING) == []


def test_warning_when_a_job_waited_long(make_runner: MakeRunner, caplog: pytest.LogCaptureFixture) -> None:
    # wait_warning=0: every start is "late", whatever the machine's speed.
    r = make_runner(2, wait_warning=0)
    with caplog.at_level(logging.WARNING, logger="keyed_dispatch"):
        r.submit(BTC, lambda: None).result(timeout=WAIT)
        with r.exclusive([BTC]):
            pass
    lines = messages(caplog, logging.WARNING)
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(r"job for strategy_1_symbol_BTC/USDT waited \d+\.\d\ds", line)


def test_warning_reports_the_real_wait(make_runner: MakeRunner, caplog: pytest.LogCaptureFixture) -> None:
    r = make_runner(2, wait_warning=0.02)
    late_admitted = r.gate()
    # The earlier job works 0.05 s once the late job is admitted; the late
    # job waits that out.
    r.submit(BTC, r.job(late_admitted, 0.05))
    with caplog.at_level(logging.WARNING, logger="keyed_dispatch"):
        late = r.submit(BTC, lambda: None)
        late_admitted.open()
        late.result(timeout=WAIT)
    (line,) = messages(caplog, logging.WARNING)
    match = re.fullmatch(r"job for strategy_1_symbol_BTC/USDT waited (\d+\.\d\d)s", line)
    assert match is not None
    assert float(match.group(1)) >= 0.05


def test_error_on_shard_exhaustion(make_runner: MakeRunner, caplog: pytest.LogCaptureFixture) -> None:
    r = make_runner(2, max_shards=1, submit_timeout=0)
    gate = r.gate()
    r.submit(BTC, r.job(gate))
    with caplog.at_level(logging.ERROR, logger="keyed_dispatch"), pytest.raises(ShardsExhausted):
        r.submit(webhook_key(2, "ETH/USDT"), print)
    assert messages(caplog, logging.ERROR) == ["shard pool exhausted: 1 shards"]


class CountingKey:
    """A key that counts how often it is turned into text."""

    def __init__(self) -> None:
        self.formatted = 0

    def __hash__(self) -> int:
        return 7

    def __str__(self) -> str:
        self.formatted += 1
        return "counting-key"


def test_disabled_levels_format_nothing(make_runner: MakeRunner, caplog: pytest.LogCaptureFixture) -> None:
    # The hot path pays nothing for disabled logging: the key is never
    # formatted unless a line is emitted.
    r = make_runner(2, wait_warning=None)
    key = CountingKey()
    with caplog.at_level(logging.INFO, logger="keyed_dispatch"):
        for _ in range(20):
            r.submit(key, lambda: None).result(timeout=WAIT)
        with r.exclusive([key]):
            pass
    assert key.formatted == 0
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        r.submit(key, lambda: None).result(timeout=WAIT)
    # Emitted lines are formatted (by each of pytest's capturing handlers).
    assert key.formatted > 0
