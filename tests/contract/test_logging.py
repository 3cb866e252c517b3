"""Point 13: log lines on the ``keyed_dispatch`` logger, lazily formatted."""

from __future__ import annotations

import logging
import re
import time

import pytest

from keyed_dispatch import ShardsExhausted, webhook_key
from tests.helpers import WAIT, Gates, MakeDispatcher

BTC = webhook_key(1, "BTC/USDT")


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "keyed_dispatch" and r.levelno == level]


def test_debug_line_on_start(make_dispatcher: MakeDispatcher, caplog: pytest.LogCaptureFixture) -> None:
    d = make_dispatcher(2, wait_warning=None)
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        d.submit(BTC, lambda: None).result(timeout=WAIT)
        d.submit_multi([BTC, webhook_key(1, "ETH/USDT")], lambda: None).result(timeout=WAIT)
        with d.exclusive([BTC]):
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


def test_warning_when_a_job_waited_long(
    make_dispatcher: MakeDispatcher, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    # wait_warning=0: every start is "late", whatever the machine's speed.
    d = make_dispatcher(2, wait_warning=0)
    with caplog.at_level(logging.WARNING, logger="keyed_dispatch"):
        d.submit(BTC, lambda: None).result(timeout=WAIT)
        with d.exclusive([BTC]):
            pass
    lines = messages(caplog, logging.WARNING)
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(r"job for strategy_1_symbol_BTC/USDT waited \d+\.\d\ds", line)


def test_warning_reports_the_real_wait(
    make_dispatcher: MakeDispatcher, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dispatcher(2, wait_warning=0.02)
    late_admitted = gates.new()

    def earlier_job() -> None:
        late_admitted.wait(WAIT)
        time.sleep(0.05)  # the job's own work, which the late job waits out

    d.submit(BTC, earlier_job)
    with caplog.at_level(logging.WARNING, logger="keyed_dispatch"):
        late = d.submit(BTC, lambda: None)
        late_admitted.set()
        late.result(timeout=WAIT)
    (line,) = messages(caplog, logging.WARNING)
    match = re.fullmatch(r"job for strategy_1_symbol_BTC/USDT waited (\d+\.\d\d)s", line)
    assert match is not None
    assert float(match.group(1)) >= 0.05


def test_error_on_shard_exhaustion(
    make_dispatcher: MakeDispatcher, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dispatcher(2, max_shards=1, submit_timeout=0)
    gate = gates.new()
    d.submit(BTC, gate.wait)
    with caplog.at_level(logging.ERROR, logger="keyed_dispatch"), pytest.raises(ShardsExhausted):
        d.submit(webhook_key(2, "ETH/USDT"), print)
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


def test_disabled_levels_format_nothing(
    make_dispatcher: MakeDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    # The hot path pays nothing for disabled logging: the key is never
    # formatted unless a line is emitted.
    d = make_dispatcher(2, wait_warning=None)
    key = CountingKey()
    with caplog.at_level(logging.INFO, logger="keyed_dispatch"):
        for _ in range(20):
            d.submit(key, lambda: None).result(timeout=WAIT)
        with d.exclusive([key]):
            pass
    assert key.formatted == 0
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        d.submit(key, lambda: None).result(timeout=WAIT)
    # Emitted lines are formatted (by each of pytest's capturing handlers).
    assert key.formatted > 0
