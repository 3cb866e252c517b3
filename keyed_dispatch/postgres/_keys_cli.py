"""``python -m keyed_dispatch keys``: look at and steer the keys of a PostgreSQL queue."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Hashable, Sequence

from ._common import DatabaseUnavailable, key_text, key_value
from ._dispatcher import PostgresDispatcher

_KEY_HELP = (
    "the key as text: a str key, as it is (BTC/USDT). For any other key give --json instead: "
    "its JSON text, as `keys list` shows it ('[1,\"BTC/USDT\"]' for webhook_key(1, 'BTC/USDT') "
    "or the tuple (1, 'BTC/USDT'), 7 for the int 7, '\"7\"' for the str '7')"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run one action on the queue, return 0 (2 on a bad setup or key)."""
    parser = argparse.ArgumentParser(
        prog="python -m keyed_dispatch keys",
        description="List, inspect, pause, resume or cancel the keys of a keyed_dispatch PostgreSQL queue, "
        "from any host: the workers see the change at once.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        default=os.environ.get("KEYED_DISPATCH_DSN"),
        help="libpq connection string or URI (default: $KEYED_DISPATCH_DSN)",
    )
    common.add_argument(
        "--schema", default="keyed_dispatch", help="the queue's schema (default keyed_dispatch)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[common], help="the live keys (with unfinished jobs, or paused), deepest first"
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many keys (default 50)")
    for name, help_line in (
        ("info", "one key: pending jobs, running, oldest wait, paused, in backoff"),
        ("pause", "start no job of the key until `resume` (a running job finishes)"),
        ("resume", "lift the key's pause"),
        ("cancel", "cancel every job of the key that is not running"),
    ):
        action = actions.add_parser(name, parents=[common], help=help_line, description=help_line)
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("key", nargs="?", help=_KEY_HELP)
        which.add_argument("--json", dest="json_key", metavar="JSON", help="the key as its JSON text")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn is required (or set KEYED_DISPATCH_DSN)")
    if args.action == "list" and args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")

    try:
        key: Hashable = None
        if args.action != "list":
            key = args.key if args.json_key is None else _json_key(args.json_key)
            shown = key_text(key)  # refuses what cannot be a key
        with PostgresDispatcher(args.dsn, schema=args.schema, submit_timeout=30.0) as dispatcher:
            if args.action == "list":
                infos = dispatcher.keys(limit=args.limit)
                rows = [
                    (
                        key_text(info.key),
                        str(info.pending),
                        _yes(info.running),
                        f"{info.oldest_wait_s:.3f}",
                        _yes(info.paused),
                        _yes(info.in_backoff),
                    )
                    for info in infos
                ]
                _table(("KEY", "PENDING", "RUNNING", "OLDEST_WAIT_S", "PAUSED", "IN_BACKOFF"), rows)
            elif args.action == "info":
                info = dispatcher.key_info(key)
                print(f"key            {shown}")
                print(f"pending        {info.pending}")
                print(f"running        {_yes(info.running)}")
                print(f"oldest wait    {info.oldest_wait_s:.3f} s")
                print(f"paused         {_yes(info.paused)}")
                print(f"in backoff     {_yes(info.in_backoff)}")
            elif args.action == "pause":
                print(f"paused {shown}" if dispatcher.pause(key) else f"{shown} was paused already")
            elif args.action == "resume":
                print(f"resumed {shown}" if dispatcher.resume(key) else f"{shown} was not paused")
            else:
                print(f"cancelled {dispatcher.cancel_pending(key)} pending job(s) of {shown}")
    except (DatabaseUnavailable, RuntimeError, TypeError, ValueError) as exc:
        print(f"keyed_dispatch keys: {exc}", file=sys.stderr)
        return 2
    return 0


def _json_key(text: str) -> Hashable:
    """The key whose JSON text is ``text`` (arrays as tuples, as ``key_value`` reads them)."""
    try:
        return key_value(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--json {text!r} is not JSON: {exc}") from None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    if not rows:
        print("no live keys")
        return
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
