"""Point 17: any hashable key; webhook_key in the seed's lock key format."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Hashable
from enum import Enum

import pytest

from keyed_dispatch import WebhookKey, webhook_key
from keyed_dispatch._keys import KeysText, normalize_keys
from tests.helpers import WAIT, MakeDispatcher


class Side(Enum):
    BUY = 1


def test_webhook_key_prints_in_the_seed_format() -> None:
    key = webhook_key(1, "BTC/USDT")
    assert str(key) == "strategy_1_symbol_BTC/USDT"
    assert f"{key}" == "strategy_1_symbol_BTC/USDT"
    assert isinstance(key, WebhookKey)
    assert (key.strategy_id, key.symbol) == (1, "BTC/USDT")


def test_webhook_key_hashes_and_compares_by_value() -> None:
    assert webhook_key(1, "BTC/USDT") == webhook_key(1, "BTC/USDT")
    assert hash(webhook_key(1, "BTC/USDT")) == hash(webhook_key(1, "BTC/USDT"))
    assert webhook_key(1, "BTC/USDT") != webhook_key(2, "BTC/USDT")
    assert webhook_key(1, "BTC/USDT") != webhook_key(1, "ETH/USDT")
    assert len({webhook_key(1, "A"), webhook_key(1, "A"), webhook_key(1, "B")}) == 2
    assert copy.deepcopy(webhook_key(3, "X")) == webhook_key(3, "X")


@pytest.mark.slow
def test_webhook_key_is_equal_across_processes() -> None:
    # Hash randomization differs per process; equality and text must not.
    code = "import json; from keyed_dispatch import webhook_key; k = webhook_key(7, 'SOL/USDT'); "
    code += "print(json.dumps([k, hash(k) == hash((7, 'SOL/USDT')), str(k)]))"
    out = subprocess.run(  # noqa: S603 - our own interpreter on a fixed script
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    fields, same_hash, text = json.loads(out.stdout)
    assert webhook_key(*fields) == webhook_key(7, "SOL/USDT")
    assert same_hash
    assert text == "strategy_7_symbol_SOL/USDT"


def test_webhook_key_rejects_unhashable_parts() -> None:
    with pytest.raises(TypeError, match="int and list"):
        webhook_key(1, ["BTC"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key",
    [0, "k", b"k", ("strategy", 1), frozenset({1, 2}), None, 2.5, Side.BUY, webhook_key(1, "BTC/USDT")],
)
def test_any_hashable_is_a_key(make_dispatcher: MakeDispatcher, key: Hashable) -> None:
    d = make_dispatcher(2)
    out: list[int] = []
    futures = [d.submit(key, out.append, i) for i in range(20)]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == list(range(20))


def test_equal_keys_are_the_same_key(make_dispatcher: MakeDispatcher) -> None:
    # 1 == 1.0 == True hash alike: they are one key, as in a dict.
    d = make_dispatcher(2)
    with d.exclusive([1]):
        assert d.stats().active_shards == 1
        blocked = d.submit(1.0, lambda: None)
        assert not blocked.done()
    blocked.result(timeout=WAIT)


def test_normalize_keys_keeps_first_seen_order() -> None:
    assert normalize_keys(["b", "a", "b", "c", "a"]) == ("b", "a", "c")


def test_keys_text() -> None:
    assert str(KeysText((webhook_key(1, "A"),))) == "strategy_1_symbol_A"
    assert str(KeysText(("a", 2))) == "a+2"
