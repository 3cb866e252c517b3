"""``python -m keyed_dispatch worker``: run a worker process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run a worker until SIGTERM/SIGINT, return 0 (2 on bad setup)."""
    parser = argparse.ArgumentParser(
        prog="python -m keyed_dispatch worker",
        description="Run keyed_dispatch jobs from a PostgreSQL queue (any number of workers, any host).",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("KEYED_DISPATCH_DSN"),
        help="libpq connection string or URI (default: $KEYED_DISPATCH_DSN)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="jobs run at once (default 16)")
    parser.add_argument(
        "--schema", default="keyed_dispatch", help="the queue's schema (default keyed_dispatch)"
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE at start (repeatable); the job functions it registers with "
        "@job_function are the ones this worker runs",
    )
    parser.add_argument(
        "--function",
        dest="functions",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="also run this function (repeatable), registered or not; a job naming a function "
        "neither imported as registered nor given here fails",
    )
    parser.add_argument("--lease", type=float, default=30.0, help="seconds a claim lasts without heartbeat")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between fallback polls")
    parser.add_argument(
        "--retention", type=float, default=7 * 86400.0, help="seconds finished jobs are kept (default 7 days)"
    )
    parser.add_argument("--install-schema", action="store_true", help="install or upgrade the schema first")
    parser.add_argument("--burst", action="store_true", help="exit once nothing is left to run")
    parser.add_argument("--name", help="worker name in the database (default host:pid:n)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn is required (or set KEYED_DISPATCH_DSN)")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from . import DatabaseUnavailable, PostgresDispatcher, run_worker  # noqa: PLC0415  # psycopg on demand

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("keyed_dispatch").info("signal %d: finishing running jobs, then exiting", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    try:
        if args.install_schema:
            with PostgresDispatcher(args.dsn, schema=args.schema) as dispatcher:
                dispatcher.install_schema()
        run_worker(
            args.dsn,
            concurrency=args.concurrency,
            schema=args.schema,
            imports=args.imports,
            functions=args.functions,
            lease=args.lease,
            poll_interval=args.poll_interval,
            retention=args.retention,
            name=args.name,
            stop=stop,
            burst=args.burst,
        )
    except (DatabaseUnavailable, RuntimeError, ImportError, ValueError, TypeError) as exc:
        print(f"keyed_dispatch worker: {exc}", file=sys.stderr)
        return 2
    return 0
