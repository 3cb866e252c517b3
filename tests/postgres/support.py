"""Helpers for the PostgreSQL tests: polling, one-off SQL, a durable DSN, a lossy proxy."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

#: The ``spawn`` fixture: start a worker process with extra CLI options.
Spawn = Callable[..., "subprocess.Popen[str]"]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def sql(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own; its rows (none for a command)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def durable(dsn: str) -> str:
    """``dsn`` with ``synchronous_commit=on`` for every session it opens.

    The embedded test server commits asynchronously (fast, but a crash loses
    the last commits); a test that stops or kills the server needs its
    commits to be durable, as a production server's are.
    """
    return psycopg.conninfo.make_conninfo(dsn, options="-c synchronous_commit=on")


class LossyProxy:
    """A TCP proxy on 127.0.0.1 to the server's Unix socket that can lose an acknowledgement.

    After :meth:`arm`, the next connections (``times`` of them) whose client
    sends ``marker`` (part of a statement's text) are cut once the server has
    answered that statement completely (its ReadyForQuery) and before the
    answer is forwarded: the statement ran and committed, the client never
    hears so. :attr:`cuts` counts them.
    """

    def __init__(self, dsn: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self._socket_path = f"{info['host']}/.s.PGSQL.{info.get('port') or 5432}"
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        # No SSL or GSS negotiation: every server message is then a typed one.
        self.dsn = psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=port,
            user=info.get("user") or "postgres",
            dbname=info.get("dbname") or "postgres",
            sslmode="disable",
            gssencmode="disable",
        )
        self._lock = threading.Lock()
        self._marker: bytes | None = None  # guarded by _lock
        self._times = 0  # guarded by _lock
        self.cuts = 0  # guarded by _lock
        self._sockets: list[socket.socket] = []  # guarded by _lock
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="lossy-proxy", daemon=True)
        self._accepter.start()

    def arm(self, marker: bytes, times: int = 1) -> None:
        """Lose the answers to the next ``times`` statements whose text holds ``marker``."""
        with self._lock:
            self._marker, self._times = marker, times

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._socket_path)
            with self._lock:
                self._sockets += [client, upstream]
            doomed = threading.Event()
            for target in (self._to_server, self._to_client):
                thread = threading.Thread(target=target, args=(client, upstream, doomed), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _to_server(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        seen = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                seen = (seen + data)[-4096:]
                with self._lock:
                    if self._times and self._marker is not None and self._marker in seen:
                        self._times -= 1
                        doomed.set()  # before the statement reaches the server
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _to_client(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                buffer += data
                while len(buffer) >= 5:
                    end = 1 + int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < end:
                        break
                    message, buffer = buffer[:end], buffer[end:]
                    if not doomed.is_set():
                        client.sendall(message)
                    elif message[:1] == b"Z":  # the doomed statement's answer is complete
                        with self._lock:
                            self.cuts += 1
                        _cut(client)
                        _cut(upstream)
                        return
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop accepting, cut every connection, wait for the threads."""
        _cut(self._listener)  # shutdown() wakes the accept() that close() alone would not
        self._accepter.join()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _cut(sock)
        for thread in self._threads:
            thread.join()


def _cut(sock: socket.socket) -> None:
    """Shut ``sock`` down (waking its readers in other threads), then close it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
