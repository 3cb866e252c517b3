"""An outbox worker: keyed messages from a SQLite table, ordered per key, safe commits.

The worker reads an ``outbox`` table in id order and dispatches each message
on its key: one key's messages are processed one at a time in id order,
different keys in parallel. Messages finish out of id order, so the worker
commits (stores in ``consumer_offsets``) only what a CommitTracker says is
safe: the highest id with every message up to it processed. Killed at any
moment, a restarted worker resumes from the committed id: every message is
processed at least once, and per key in order. (Messages after the committed
id that had already been processed are processed again: at-least-once, so
processing should be idempotent.)

A message whose processing fails is not skipped silently: the tracker holds
the commit just before it until the worker has written it to
``dead_letters``; then it counts as handled.

Try it::

    python examples/outbox_worker.py fill /tmp/outbox.db --messages 500 --keys 6
    python examples/outbox_worker.py run /tmp/outbox.db --exit-when-idle
    sqlite3 /tmp/outbox.db 'SELECT * FROM consumer_offsets'

Kill it (``kill -9``) half-way and run it again: nothing is lost.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence

from keyed_dispatch import CommitTracker, KeyedDispatcher

logger = logging.getLogger("outbox_worker")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
-- What processing did, one row per processing (a message processed twice
-- has two rows); a real worker would update its own state here instead.
CREATE TABLE IF NOT EXISTS processed (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL,
    key        TEXT NOT NULL,
    run        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id INTEGER NOT NULL,
    error      TEXT NOT NULL
);
"""


def connect(path: str, *, shared: bool = False) -> sqlite3.Connection:
    """Open the database; each thread uses its own connection.

    WAL lets the reader, the committer and the processing threads work at
    once; the timeout makes writers queue instead of failing. ``shared``
    lets another thread close the connection once its user is done.
    """
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=not shared)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def fill(path: str, messages: int, keys: int) -> None:
    """Append ``messages`` messages over ``keys`` keys to the outbox."""
    db = connect(path)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO outbox (key, payload) VALUES (?, ?)",
        [(f"key-{n % keys}", f"message {n}") for n in range(messages)],
    )
    db.execute("COMMIT")
    db.close()


class Processor:
    """Processes one message; called on dispatcher threads.

    Each thread gets its own connection (sqlite3 objects must not cross
    threads); ``close`` closes them all.
    """

    def __init__(self, path: str, run: str, work: float) -> None:
        self.path = path
        self.run = run
        self.work = work
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def __call__(self, message_id: int, key: str, payload: str) -> None:
        if payload == "poison":
            raise ValueError(f"message {message_id} cannot be processed")
        time.sleep(self.work)  # stands for the message's real work
        db = getattr(self._local, "db", None)
        if db is None:
            # Used by this thread only; closed by close() after the
            # dispatcher has shut down (hence shared=True).
            db = self._local.db = connect(self.path, shared=True)
            with self._lock:
                self._connections.append(db)
        db.execute(
            "INSERT INTO processed (message_id, key, run) VALUES (?, ?, ?)", (message_id, key, self.run)
        )

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()


def run(
    path: str,
    *,
    consumer: str = "worker",
    run_id: str = "1",
    work: float = 0.005,
    batch: int = 100,
    workers: int = 8,
    poll: float = 0.05,
    exit_when_idle: bool = False,
) -> None:
    """Consume the outbox from the committed position on.

    Reads ``batch`` messages at a time, dispatches each on its key, and
    after every read stores the tracker's safe position. ``max_pending``
    bounds the messages read ahead: a full dispatcher blocks the reader.
    """
    db = connect(path)
    row = db.execute("SELECT position FROM consumer_offsets WHERE consumer = ?", (consumer,)).fetchone()
    committed = row[0] if row else 0
    tracker = CommitTracker(committed=committed)
    processor = Processor(path, run_id, work)
    read_up_to = committed
    stored = committed
    logger.info("run %s starts after the committed position %d", run_id, committed)
    dispatcher = KeyedDispatcher(workers, max_pending=2 * batch, submit_timeout=float("inf"))
    try:
        while True:
            rows = db.execute(
                "SELECT id, key, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (read_up_to, batch)
            ).fetchall()
            for message_id, key, payload in rows:
                tracker.track(message_id, dispatcher.submit(key, processor, message_id, key, payload))
                read_up_to = message_id
            for message_id, error in tracker.failures().items():
                # Not skipped silently: recorded, then settled for commit.
                db.execute(
                    "INSERT INTO dead_letters (message_id, error) VALUES (?, ?)", (message_id, repr(error))
                )
                logger.warning("message %d dead-lettered: %r", message_id, error)
                tracker.done(message_id)
            safe = tracker.safe_position()
            if safe is not None and safe != stored:
                db.execute(
                    "INSERT INTO consumer_offsets (consumer, position) VALUES (?, ?) "
                    "ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
                    (consumer, safe),
                )
                stored = safe
            if not rows:
                if exit_when_idle and not tracker.in_flight() and not tracker.failures() and stored == safe:
                    logger.info("run %s idle at position %s; exiting", run_id, stored)
                    return
                tracker.wait(poll)  # wakes early once everything in flight is done
    finally:
        dispatcher.shutdown(wait=True)
        processor.close()
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``fill`` the outbox with messages, or ``run`` the worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    filling = commands.add_parser("fill", help="append messages to the outbox")
    filling.add_argument("db")
    filling.add_argument("--messages", type=int, default=500)
    filling.add_argument("--keys", type=int, default=6)
    running = commands.add_parser("run", help="consume the outbox")
    running.add_argument("db")
    running.add_argument("--consumer", default="worker")
    running.add_argument("--run-id", default="1", help="recorded with each processing")
    running.add_argument("--work-ms", type=float, default=5.0, help="work per message")
    running.add_argument("--exit-when-idle", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.command == "fill":
        fill(args.db, args.messages, args.keys)
    else:
        run(
            args.db,
            consumer=args.consumer,
            run_id=args.run_id,
            work=args.work_ms / 1000,
            exit_when_idle=args.exit_when_idle,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
