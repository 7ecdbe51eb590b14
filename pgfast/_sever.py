"""Cutting a connection's link from any thread, without blocking."""

from __future__ import annotations

import socket
from typing import Any


def sever(pgconn: Any) -> bool:
    """Shut the socket of ``pgconn`` (a ``psycopg.pq.PGconn``) down in both directions.

    Whoever waits on the connection (a thread in ``recv``, an event loop's
    reader) wakes up at once and sees the link as lost: psycopg then raises
    ``OperationalError`` and marks the connection broken, so the pool discards
    it. This never blocks, unlike a cancel request or a close on a stalled
    link, and it is safe from another thread: the file descriptor is not
    closed (libpq still owns it). Returns False when there was no open socket.
    """
    try:
        fd = pgconn.socket
    except Exception:  # already closed: psycopg raises OperationalError
        return False
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        sock.detach()  # the descriptor stays libpq's
    return True
