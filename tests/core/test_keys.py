"""Point 17: webhook_key in the lock-manager design's key format; key normalization.

That any hashable is a key, on both runners, is in tests/contract/test_keys.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from keyed_dispatch import WebhookKey, webhook_key
from keyed_dispatch._keys import KeysText, normalize_keys


def test_webhook_key_prints_in_the_lock_manager_format() -> None:
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


def test_normalize_keys_keeps_first_seen_order() -> None:
    assert normalize_keys(["b", "a", "b", "c", "a"]) == ("b", "a", "c")


def test_keys_text() -> None:
    assert str(KeysText((webhook_key(1, "A"),))) == "strategy_1_symbol_A"
    assert str(KeysText(("a", 2))) == "a+2"
