"""One key identity in every mode: a key is the same key in PostgreSQL as in-process."""

# ruff: noqa: S608  # the tests build SQL from test schema names

from __future__ import annotations

import math
import threading
from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("psycopg")

from keyed_dispatch import webhook_key
from keyed_dispatch.postgres import MAX_KEY_BYTES, PostgresDispatcher, key_text, key_value
from tests.conftest import WorkerFactory
from tests.postgres import tasks
from tests.postgres.support import sql
from tests.strategies import distributed_keys, equal_keys


def _fits(key: Hashable) -> bool:
    # A few large integral floats (1.5e300 has 301 digits) outgrow MAX_KEY_BYTES.
    try:
        key_text(key)
    except ValueError:
        return False
    return True


storable_keys = distributed_keys().filter(_fits)


@given(data=st.data())
def test_two_keys_share_a_text_exactly_when_they_are_equal(data: st.DataObject) -> None:
    a = data.draw(storable_keys, label="a")
    b = data.draw(st.one_of(storable_keys, equal_keys(a)), label="b")
    assert (a == b) == (key_text(a) == key_text(b))


@given(key=storable_keys)
def test_a_stored_text_reads_back_as_an_equal_key(key: Hashable) -> None:
    text = key_text(key)
    assert key_value(text) == key
    assert key_text(key_value(text)) == text


def test_the_encoding_is_canonical_json() -> None:
    assert key_text("BTC/USDT") == '"BTC/USDT"'
    assert key_text(7) == "7"
    assert key_text("7") == '"7"'
    # A WebhookKey is the tuple it equals, printed or not as the lock-manager design's key.
    assert key_text(webhook_key(1, "BTC/USDT")) == key_text((1, "BTC/USDT")) == '[1,"BTC/USDT"]'
    assert key_text(True) == key_text(1.0) == "1"
    assert key_text(-0.0) == key_text(False) == "0"
    assert key_text(0.5) == "0.5"
    assert key_text(None) == "null"
    assert key_text(("a", ("b", None))) == '["a",["b",null]]'
    assert key_text("a\x00\n") == '"a\\u0000\\n"'  # NUL is escaped, so it may be in a key
    assert key_text("é") == '"é"'  # readable in the database


class _Loose(str):
    def __eq__(self, other: object) -> bool:
        return str.__eq__(self.lower(), str(other).lower())

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    ("key", "error", "match"),
    [
        (b"k", TypeError, "got bytes"),
        (frozenset({1}), TypeError, "got frozenset"),
        ((1, b"k"), TypeError, r"got bytes: b'k' in key \(1, b'k'\)"),
        (1j, TypeError, "got complex"),
        (_Loose("a"), TypeError, "got _Loose"),  # its own == would not be honoured
        (math.nan, ValueError, "NaN"),
        (math.inf, ValueError, "inf"),
        ("a\ud800", ValueError, "surrogate"),
        ("x" * MAX_KEY_BYTES, ValueError, f"more than the {MAX_KEY_BYTES}"),
        (10**2000, ValueError, f"more than the {MAX_KEY_BYTES}"),
        (
            (
                (
                    (
                        (
                            (
                                (
                                    (
                                        (
                                            (
                                                (
                                                    (
                                                        (
                                                            (
                                                                (
                                                                    (
                                                                        (
                                                                            (
                                                                                (
                                                                                    (
                                                                                        (
                                                                                            (
                                                                                                (
                                                                                                    (
                                                                                                        (
                                                                                                            (
                                                                                                                (
                                                                                                                    (
                                                                                                                        (
                                                                                                                            (
                                                                                                                                (
                                                                                                                                    (
                                                                                                                                        (
                                                                                                                                            (
                                                                                                                                                (),
                                                                                                                                            ),
                                                                                                                                        ),
                                                                                                                                    ),
                                                                                                                                ),
                                                                                                                            ),
                                                                                                                        ),
                                                                                                                    ),
                                                                                                                ),
                                                                                                            ),
                                                                                                        ),
                                                                                                    ),
                                                                                                ),
                                                                                            ),
                                                                                        ),
                                                                                    ),
                                                                                ),
                                                                            ),
                                                                        ),
                                                                    ),
                                                                ),
                                                            ),
                                                        ),
                                                    ),
                                                ),
                                            ),
                                        ),
                                    ),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
            ValueError,
            "nest",
        ),
    ],
)
def test_keys_that_cannot_be_stored_faithfully_are_refused(
    key: Hashable, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        key_text(key)


PAIRS = [
    (webhook_key(1, "BTC/USDT"), (1, "BTC/USDT")),
    (7, "7"),
    (1, 1.0),
    (True, 1),
    ("a", ("a",)),
    (None, "null"),
]


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_a_pair_of_keys_is_one_key_in_postgres_exactly_when_it_is_one_in_process(
    pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory, first: Hashable, second: Hashable
) -> None:
    name = f"pair-{pg_schema}"
    tasks.gates[name] = threading.Event()
    tasks.started[name] = threading.Event()
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        blocker = d.submit(first, "tests.postgres.tasks:gate", name)
        assert tasks.started[name].wait(20)
        other = d.submit(second, "tests.postgres.tasks:echo")
        # Waiting for the blocker's key, or not: as in-process.
        [(blockers,)] = sql(pg_dsn, f"SELECT blockers FROM {pg_schema}.jobs WHERE id = %s", (other.job_id,))
        in_postgres = blockers == 1
        if not in_postgres:
            other.result(20)  # it runs while the blocker holds its own key
        tasks.gates[name].set()
        assert blocker.result(20) == name
        other.result(20)
    # The in-process runners queue jobs by the key itself, as a dict does.
    in_process = len({first: None, second: None}) == 1
    assert in_postgres == in_process == (first == second)


def test_equal_keys_of_one_job_collapse(pg_dsn: str, pg_schema: str, pg_worker: WorkerFactory) -> None:
    pg_worker()
    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        job = d.submit_multi([1, 1.0, True, webhook_key("a", 2), ("a", 2)], "tests.postgres.tasks:context")
        assert job.result(20)["keys"] == [1, ["a", 2]]
