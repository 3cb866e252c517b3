"""Point 17: any hashable is a key; equal keys are one key."""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum

import pytest

from keyed_dispatch import webhook_key
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT


class Side(Enum):
    BUY = 1


@pytest.mark.parametrize(
    "key",
    [0, "k", b"k", ("strategy", 1), frozenset({1, 2}), None, 2.5, Side.BUY, webhook_key(1, "BTC/USDT")],
)
def test_any_hashable_is_a_key(make_runner: MakeRunner, key: Hashable) -> None:
    r = make_runner(2)
    out: list[int] = []
    futures = [r.submit(key, out.append, i) for i in range(20)]
    for future in futures:
        future.result(timeout=WAIT)
    assert out == list(range(20))


def test_equal_keys_are_the_same_key(make_runner: MakeRunner) -> None:
    # 1 == 1.0 == True hash alike: they are one key, as in a dict.
    r = make_runner(2)
    with r.exclusive([1]):
        assert r.stats().active_shards == 1
        blocked = r.submit(1.0, lambda: None)
        assert not blocked.done()
    blocked.result(timeout=WAIT)
