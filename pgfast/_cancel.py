"""Server-side cancel requests that never block the caller, the event loop or the GIL.

A cancel request opens a new connection to the server, sends the backend's
key and waits for the server to hang up. On a stalled link that wait lasts
until the TCP stack gives up (minutes). libpq before 17 only offers the
blocking ``PQcancel``, and psycopg's C build calls it holding the GIL, so the
whole interpreter froze for as long (psycopg runs it in a worker thread, which
does not help while the GIL is held). pgfast sends every cancel request from a
daemon thread through a call that releases the GIL:

- libpq >= 17: the non-blocking cancel API (``PQcancelStart`` and polling);
- psycopg's pure-Python libpq wrapper: its ctypes call releases the GIL;
- psycopg's C and binary builds: ``PQcancel`` called through ``ctypes`` (which
  releases the GIL) on the very libpq those builds loaded, found among the
  process's mapped files, with the connection's ``PGconn`` pointer.

Only when none of these is possible (no ``/proc``, an unknown build) does it
fall back to psycopg's own cancel, in the daemon thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import generators, pq, waiting

logger = logging.getLogger("pgfast")

# The longest a cancel request may take before its thread gives up waiting for
# the server's answer (the non-blocking path only; PQcancel has no timeout).
CANCEL_REQUEST_TIMEOUT = 30.0


def request_cancel(pgconn: Any) -> threading.Event:
    """Ask the server to cancel what ``pgconn`` is running; return at once.

    The request is sent from a daemon thread; the returned event is set when
    it has been sent and acknowledged (or failed). Call it while ``pgconn`` is
    open: the backend's key is read here, on the caller's thread, without I/O.
    """
    done = threading.Event()
    try:
        send = _sender(pgconn)
    except Exception as exc:  # the connection closed meanwhile: nothing to cancel
        logger.debug("pgfast: no cancel request sent: %s", exc)
        done.set()
        return done

    def run() -> None:
        try:
            send()
        except Exception as exc:
            logger.warning("pgfast: the cancel request failed: %s", exc)
        finally:
            done.set()

    threading.Thread(target=run, name="pgfast-cancel", daemon=True).start()
    return done


def _sender(pgconn: Any) -> Callable[[], None]:
    """A function sending the cancel request without holding the GIL."""
    if psycopg.capabilities.has_cancel_safe():
        cancel_conn = pgconn.cancel_conn()

        def nonblocking() -> None:
            try:
                cancel_conn.start()
                waiting.wait_conn(generators.cancel(cancel_conn), timeout=CANCEL_REQUEST_TIMEOUT)
            finally:
                cancel_conn.finish()

        return nonblocking
    libpq = None if pq.__impl__ == "python" else _loaded_libpq()
    if libpq is None:
        # The pure-Python wrapper releases the GIL in its ctypes call; for an
        # unknown build this is the best there is.
        cancel_request: Callable[[], None] = pgconn.get_cancel().cancel
        return cancel_request
    ptr = pgconn.pgconn_ptr
    if ptr is None:
        raise psycopg.OperationalError("the connection is closed")
    cancel = libpq.PQgetCancel(ctypes.c_void_p(ptr))
    if not cancel:
        raise psycopg.OperationalError("libpq could not build a cancel request")

    def blocking_without_gil() -> None:
        try:
            errbuf = ctypes.create_string_buffer(256)
            if not libpq.PQcancel(cancel, errbuf, len(errbuf)):
                raise psycopg.OperationalError(errbuf.value.decode("utf-8", "replace"))
        finally:
            libpq.PQfreeCancel(cancel)

    return blocking_without_gil


@lru_cache(maxsize=1)
def _loaded_libpq() -> Any:
    """The libpq psycopg's compiled build loaded, through ctypes; None if not found.

    It must be that very library, not another libpq on the machine: a
    ``PGconn`` pointer means something only to the library that made it.
    """
    path = _mapped_libpq_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.PQgetCancel.argtypes = [ctypes.c_void_p]
    lib.PQgetCancel.restype = ctypes.c_void_p
    lib.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.PQcancel.restype = ctypes.c_int
    lib.PQfreeCancel.argtypes = [ctypes.c_void_p]
    lib.PQfreeCancel.restype = None
    return lib


def _mapped_libpq_path() -> str | None:
    """The path of the one libpq mapped into this process (Linux), else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            rows = [line.split(None, 5) for line in maps]
            paths = {parts[5].strip() for parts in rows if len(parts) == 6}
            found = {p for p in paths if os.path.basename(p).startswith("libpq")}
    except OSError:
        return None
    found = {p for p in found if p.startswith("/") and ".so" in os.path.basename(p)}
    # Two different libpqs loaded: which one made the PGconn is unknown.
    return found.pop() if len(found) == 1 else None
