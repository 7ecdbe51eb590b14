"""``FaultProxy``: a loopback TCP proxy that injects latency, stalls and resets.

One background thread runs a ``selectors`` loop over every socket. Controls
called from other threads are queued to that thread and applied between two
loop iterations, so once a control returns it holds for every connection, open
or new: no byte is forwarded after ``stall()`` returns.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["FaultProxy"]

_LOOPBACK = "127.0.0.1"
_CHUNK = 65536
# Per direction: stop reading from a peer while this much is queued for the other.
_MAX_QUEUED = 1 << 20
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

T = TypeVar("T")


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of the usual FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def rewrite_conninfo(conninfo: str, host: str, port: int) -> str:
    """``conninfo`` (a URL or ``key=value`` string) pointed at ``host:port`` instead.

    Every other parameter is kept; ``hostaddr`` is dropped (it would win over
    ``host``). A URL stays a URL, with its text otherwise unchanged.
    """
    match = re.match(r"(postgres(?:ql)?://)([^/?#]*)(.*)\Z", conninfo, re.DOTALL)
    if match is None:
        params = conninfo_to_dict(conninfo)
        params.pop("hostaddr", None)
        params.update(host=host, port=str(port))
        return make_conninfo("", **params)
    scheme, authority, rest = match.groups()
    userinfo = authority.rpartition("@")[0]
    path, _, query = rest.partition("?")
    # Query parameters override the authority in libpq: drop those that name the server.
    kept = [
        item
        for item in query.split("&")
        if item and unquote(item.partition("=")[0]) not in ("host", "hostaddr", "port")
    ]
    at = "@" if "@" in authority else ""
    tail = f"?{'&'.join(kept)}" if kept else ""
    return f"{scheme}{userinfo}{at}{host}:{port}{path}{tail}"


class _Direction:
    """Bytes read from ``src`` waiting to be written to ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.chunks: deque[tuple[float, bytes]] = deque()  # (time read, bytes)
        self.queued = 0
        self.eof = False  # src sent FIN
        self.shut = False  # ... and it was passed on to dst
        self.blocked = False  # dst's send buffer was full at the last write


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket, connecting: bool) -> None:
        self.client, self.server = client, server
        self.connecting = connecting
        self.up = _Direction(client, server)
        self.down = _Direction(server, client)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``host:port``, for fault-injection tests.

    Use as a context manager (or ``start()`` / ``stop()``) and connect through
    ``url_for(url)``. ``delay``, ``stall``/``resume``, ``reset_all`` and
    ``reset_connects`` may be called at any time from any thread; each applies
    to the open connections and to new ones. Cancel requests are new
    connections to the same address, so they go through the proxy too (a
    stalled proxy stalls them as well).
    """

    def __init__(self, host: str, port: int, *, max_connections: int = 256) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
        self._target = (host, port)
        self._max_connections = max_connections
        self._delay = 0.0
        self._stalled = False
        self._reset_every = 0
        self._accepted_since_rule = 0
        self._connections = 0
        self._links: dict[socket.socket, _Link] = {}  # keyed by both of a link's sockets
        self._masks: dict[socket.socket, int] = {}
        self._calls: deque[tuple[Callable[[], Any], threading.Event, list[Any]]] = deque()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._port = 0
        self._address: tuple[Any, ...] = ()
        self._family = socket.AF_INET
        self._stopping = False
        self._crash: BaseException | None = None

    @classmethod
    def for_url(cls, url: str, *, max_connections: int = 256) -> FaultProxy:
        """A proxy in front of the server that ``url`` (a URL or conninfo) names."""
        params = conninfo_to_dict(url)
        host = params.get("hostaddr") or params.get("host")
        if not host or str(host).startswith("/"):
            raise ValueError("FaultProxy.for_url needs a TCP host in the connection string")
        if "," in str(host) or "," in str(params.get("port") or ""):
            raise ValueError("FaultProxy.for_url needs a single host, not a list")
        port = params.get("port") or 5432
        try:
            port_number = int(port)
        except ValueError:
            raise ValueError("the connection string's port is not a number") from None
        return cls(str(host), port_number, max_connections=max_connections)

    # -- lifecycle

    def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1 and start forwarding; a no-op when running."""
        if self._thread is not None:
            if self._stopping:
                raise RuntimeError("FaultProxy is stopped: create a new one")
            return self
        host, port = self._target
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"FaultProxy cannot resolve its target host {host!r}: {exc}") from exc
        # "localhost" may resolve to ::1 first while the server listens on 127.0.0.1 only.
        info = min(infos, key=lambda i: i[0] != socket.AF_INET)
        self._family, self._address = info[0], info[4]
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((_LOOPBACK, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener, self._port = listener, int(listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, _READ)
        self._selector.register(self._wake_r, _READ)
        self._thread = threading.Thread(target=self._run, name="pgfast-FaultProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and join the thread; idempotent."""
        thread = self._thread
        if thread is None or self._stopping:
            return
        self._stopping = True
        self._wake()
        thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        host, port = self._target
        where = f"127.0.0.1:{self._port}" if self._port else "not started"
        return f"<FaultProxy {where} -> {host}:{port} active={self.active}>"

    # -- addresses and counters

    @property
    def port(self) -> int:
        """The port the proxy listens on (on 127.0.0.1)."""
        if not self._port:
            raise RuntimeError("FaultProxy is not started: use `with FaultProxy(...)` or start()")
        return self._port

    def url_for(self, url: str) -> str:
        """``url`` (a URL or ``key=value`` conninfo) rewritten to connect through the proxy."""
        return rewrite_conninfo(url, _LOOPBACK, self.port)

    @property
    def connections(self) -> int:
        """Connections accepted so far, including those reset on arrival."""
        return self._connections

    @property
    def active(self) -> int:
        """Connections open now."""
        return len(self._links) // 2

    # -- controls

    def delay(self, seconds: float) -> None:
        """Hold every chunk of bytes ``seconds`` before passing it on, in each
        direction (a round trip gains twice that); ``0`` turns it off."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {seconds!r}")

        def apply() -> None:
            self._delay = float(seconds)

        self._call(apply)

    def stall(self) -> None:
        """Stop forwarding in both directions, keeping every socket open (a dead
        link). New connections are accepted but stall too."""

        def apply() -> None:
            self._stalled = True

        self._call(apply)

    def resume(self) -> None:
        """Forward again after ``stall()``, starting with the bytes held meanwhile."""

        def apply() -> None:
            self._stalled = False

        self._call(apply)

    def reset_all(self) -> int:
        """Abort every open connection, client and target side, with a TCP RST;
        returns how many there were."""

        def apply() -> int:
            links = self._each_link()
            for link in links:
                self._close_link(link, abort=True)
            return len(links)

        return self._call(apply)

    def reset_connects(self, every: int) -> None:
        """Reset new connections on arrival, before forwarding anything: the
        next one, then one in every ``every`` after it (``1``: all of them,
        ``2``: the 1st, 3rd, 5th...). ``0`` turns it off."""
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"every must be an int >= 0, got {every!r}")

        def apply() -> None:
            self._reset_every, self._accepted_since_rule = every, 0

        self._call(apply)

    # -- the loop thread

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the loop thread between two iterations and return its result."""
        thread = self._thread
        if thread is None:
            return fn()  # not started: nothing runs concurrently
        if self._stopping or not thread.is_alive():
            raise RuntimeError("FaultProxy is stopped")
        if thread is threading.current_thread():
            return fn()
        done = threading.Event()
        box: list[Any] = []
        self._calls.append((fn, done, box))
        self._wake()
        while not done.wait(0.05):
            if not thread.is_alive():
                raise RuntimeError("FaultProxy is stopped") from self._crash
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0]  # type: ignore[no-any-return]

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # a full pipe is already a pending wake-up
                self._wake_w.send(b"\0")

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping:
                self._run_calls()
                self._forward()
                self._update_interest()
                for key, events in self._selector.select(self._timeout()):
                    self._on_event(key.fileobj, events)  # type: ignore[arg-type]
        except BaseException as exc:  # keep the reason for callers, then clean up
            self._crash = exc
            raise
        finally:
            self._shutdown()

    def _run_calls(self) -> None:
        while self._calls:
            fn, done, box = self._calls.popleft()
            try:
                box.append(fn())
            except Exception as exc:
                box.append(exc)
            done.set()

    def _each_link(self) -> list[_Link]:
        """Every open link once (``_links`` holds each under both its sockets)."""
        return [link for sock, link in self._links.items() if sock is link.client]

    def _shutdown(self) -> None:
        for link in self._each_link():
            self._close_link(link, abort=False)
        self._run_calls()  # nobody waits forever on a control sent during stop()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()

    def _timeout(self) -> float | None:
        """Seconds until the next delayed chunk is due (None: wait for an event)."""
        if self._stalled or self._delay == 0:
            return None
        due = [
            d.chunks[0][0] + self._delay
            for link in self._links.values()
            for d in (link.up, link.down)
            if d.chunks and not d.blocked and not link.connecting
        ]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_event(self, sock: socket.socket, events: int) -> None:
        if sock is self._wake_r:
            with contextlib.suppress(OSError):
                sock.recv(4096)
        elif sock is self._listener:
            self._accept(sock)
        elif (link := self._links.get(sock)) is not None:
            if events & _WRITE:
                if link.connecting and sock is link.server:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        self._close_link(link, abort=True)  # the client sees a reset
                        return
                    link.connecting = False
                link.up.blocked = link.down.blocked = False
            if events & _READ:
                self._read(link, link.up if sock is link.client else link.down)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: drop this one, keep serving
                return
            self._connections += 1
            self._accepted_since_rule += 1
            every = self._reset_every
            reset = every and (self._accepted_since_rule - 1) % every == 0
            if reset or self.active >= self._max_connections:
                _abort(client)
                continue
            server = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                for sock in (client, server):
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                error = server.connect_ex(self._address)
            except OSError:  # the client already went away
                error = -1
            if error not in (0, errno.EINPROGRESS):
                server.close()
                _abort(client)
                continue
            link = _Link(client, server, connecting=error != 0)
            self._links[client] = self._links[server] = link

    def _read(self, link: _Link, direction: _Direction) -> None:
        try:
            data = direction.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link, abort=True)  # pass a reset on as a reset
            return
        if data:
            direction.chunks.append((time.monotonic(), data))
            direction.queued += len(data)
        else:
            direction.eof = True

    def _forward(self) -> None:
        """Write every due chunk that the destination accepts; pass FINs on."""
        if self._stalled:
            return
        now = time.monotonic()
        for link in self._each_link():
            if link.connecting:
                continue
            for direction in (link.up, link.down):
                if not self._write(link, direction, now):
                    break
            else:
                if link.up.shut and link.down.shut:
                    self._close_link(link, abort=False)

    def _write(self, link: _Link, direction: _Direction, now: float) -> bool:
        """Forward what is due in one direction; False when the link was closed."""
        while direction.chunks and not direction.blocked:
            received, data = direction.chunks[0]
            if received + self._delay > now:
                return True
            try:
                sent = direction.dst.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_link(link, abort=True)
                return False
            direction.queued -= sent
            if sent < len(data):
                direction.chunks[0] = (received, data[sent:])
                direction.blocked = True
            else:
                direction.chunks.popleft()
        if direction.eof and not direction.chunks and not direction.shut:
            direction.shut = True
            with contextlib.suppress(OSError):
                direction.dst.shutdown(socket.SHUT_WR)
        return True

    def _update_interest(self) -> None:
        assert self._selector is not None
        for sock, link in list(self._links.items()):
            mask = 0
            if not self._stalled:
                if link.connecting:
                    mask = _WRITE if sock is link.server else 0
                else:
                    reading = link.up if sock is link.client else link.down
                    writing = link.down if sock is link.client else link.up
                    if not reading.eof and reading.queued < _MAX_QUEUED:
                        mask |= _READ
                    if writing.blocked:
                        mask |= _WRITE
            current = self._masks.get(sock, 0)
            if mask == current:
                continue
            if current == 0:
                self._selector.register(sock, mask)
            elif mask == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, mask)
            self._masks[sock] = mask

    def _close_link(self, link: _Link, *, abort: bool) -> None:
        assert self._selector is not None
        for sock in (link.client, link.server):
            if self._links.pop(sock, None) is None:
                continue
            if self._masks.pop(sock, 0):
                self._selector.unregister(sock)
            if abort:
                _abort(sock)
            else:
                sock.close()
