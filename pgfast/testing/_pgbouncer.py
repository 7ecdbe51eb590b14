"""``LocalPgBouncer``: a throwaway PgBouncer in front of a PostgreSQL server.

PgBouncer runs in the foreground from a temp dir holding its config, auth
file, log and unix socket, listens on a free port of 127.0.0.1, and runs as
the unprivileged user of ``LocalCluster`` when started by root (it refuses to
run as root). Clients authenticate to it with scram-sha-256 and the server's
own user and password, which it also uses to log into the server.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ._local import ClusterError, _free_port, _poll, _RunAs, _server_user
from ._proxy import rewrite_conninfo

__all__ = ["LocalPgBouncer", "find_pgbouncer"]

_SEARCH = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer")
_POOL_MODES = ("session", "transaction", "statement")
_START_TIMEOUT = 30.0
_CONFIG, _AUTH, _LOG = "pgbouncer.ini", "userlist.txt", "pgbouncer.log"
# libpq sends ``options`` when asked for settings such as pgfast's ``schema`` and
# timeouts; PgBouncer (before 1.20) refuses any startup parameter it does not
# track unless told to ignore it, and then drops it.
_IGNORED = "extra_float_digits,options"
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
# Settings LocalPgBouncer chooses itself: where it listens and keeps its files.
_MANAGED = frozenset(
    {"listen_addr", "listen_port", "unix_socket_dir", "auth_file", "pidfile", "logfile"}
)


def find_pgbouncer() -> Path:
    """The ``pgbouncer`` executable: on ``PATH``, else in the usual sbin directories."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for candidate in _SEARCH:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ClusterError(
        "pgbouncer not found on PATH nor in " + ", ".join(_SEARCH) + ": install it "
        "(Debian: `apt-get install pgbouncer`)"
    )


def _quote_value(name: str, value: str) -> str:
    """A value for the ``[databases]`` connect string (single quotes when needed)."""
    if any(c in value for c in "'\\\n\r\0"):
        raise ClusterError(f"the server's {name} contains a character PgBouncer cannot take")
    return f"'{value}'" if re.search(r"[\s;=]", value) or not value else value


def _auth_line(user: str, password: str) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    return f"{quoted(user)} {quoted(password)}\n"


@dataclass(frozen=True)
class _Server:
    """Where PgBouncer connects, from a connection string plus libpq's defaults."""

    host: str
    port: str
    user: str
    password: str

    @classmethod
    def parse(cls, url: str) -> _Server:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        env = os.environ

        def get(key: str, var: str) -> str:
            return params.get(key) or env.get(var, "")

        host = params.get("hostaddr") or get("host", "PGHOST")
        if not host:
            host = "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp"
        port = get("port", "PGPORT") or "5432"
        if "," in host or "," in port:
            raise ClusterError("LocalPgBouncer needs a single server, not a list of hosts")
        user = get("user", "PGUSER") or getpass.getuser()
        return cls(host, port, user, get("password", "PGPASSWORD"))


@dataclass
class _Runtime:
    """What stopping needs; kept apart from LocalPgBouncer for its finalizer."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    watchdog: subprocess.Popen[str] | None = None

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()  # SIGTERM: PgBouncer's immediate shutdown
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.release_watchdog()

    def release_watchdog(self) -> None:
        stdin = self.watchdog.stdin if self.watchdog is not None else None
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write("done\n")
                stdin.close()
        if self.watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(timeout=5)

    def watch(self, pid: int) -> None:
        """Have the watchdog stop ``pid`` if this process dies first."""
        assert self.watchdog is not None and self.watchdog.stdin is not None
        # Best effort: should the watchdog be gone, stop() and the finalizer still work.
        with contextlib.suppress(OSError):
            self.watchdog.stdin.write(f"pid {pid}\n")
            self.watchdog.stdin.flush()


def _start_watchdog(root: Path, config: Path) -> subprocess.Popen[str]:
    """A child in its own session that cleans up if this process dies (see ``_watch``)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from pgfast.testing._pgbouncer import _watch; _watch()"],
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps({"root": str(root), "config": str(config)}) + "\n")
    process.stdin.flush()
    return process


def _watch() -> None:
    """The watchdog: read ``pid N`` lines until ``done``; at EOF without ``done``
    (the owner died without stopping PgBouncer: SIGKILL, ``os._exit``), stop
    those PgBouncers and remove the temp dir."""
    # The owner's terminal or process group may be signalled as it dies: outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = json.loads(sys.stdin.readline())
    pids: list[int] = []
    for line in sys.stdin:
        if line.strip() == "done":
            return
        if line.startswith("pid "):
            pids.append(int(line.split()[1]))

    def ours(pid: int) -> bool:
        # The pid may have been reused since: only signal a pgbouncer reading our config.
        try:
            return state["config"] in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return False

    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if ours(pid)]
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if ours(pid)]
    shutil.rmtree(state["root"], ignore_errors=True)


class LocalPgBouncer:
    """A throwaway PgBouncer on a free 127.0.0.1 port in front of the server ``url`` names.

    ``url`` (a URL or ``key=value`` conninfo) must carry the server's user and
    password (or take them from ``PGUSER``/``PGPASSWORD``); clients use the
    same ones through ``.url``. Any database name is routed to the same
    server. ``pool_mode`` is ``"transaction"`` (the default), ``"session"``
    or ``"statement"``; at most ``default_pool_size`` server connections are
    open per database and user, shared by up to ``max_client_conn`` clients.
    ``settings`` adds or overrides lines of the ``[pgbouncer]`` section.

    The startup parameters ``extra_float_digits`` and ``options`` are accepted
    and dropped (``ignore_startup_parameters``): settings a client passes in
    ``options`` (pgfast's ``schema`` and timeouts) do not reach the server.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 4,
        max_client_conn: int = 100,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        if pool_mode not in _POOL_MODES:
            choices = ", ".join(_POOL_MODES)
            raise ValueError(f"pool_mode must be one of {choices}, got {pool_mode!r}")
        sizes = {"default_pool_size": default_pool_size, "max_client_conn": max_client_conn}
        for name, size in sizes.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        extra = dict(settings or {})
        for name, setting in extra.items():
            if not _SETTING_NAME.match(name):
                raise ValueError(f"not a PgBouncer setting name: {name!r}")
            if name in _MANAGED:
                raise ValueError(f"setting {name} is chosen by LocalPgBouncer itself")
            if not isinstance(setting, (str, int)) or any(c in str(setting) for c in "\n\r\0"):
                raise ValueError(f"setting {name} must be a str or int on one line")
        self._url = url
        self._server = _Server.parse(url)
        self._settings: dict[str, str] = {
            "pool_mode": pool_mode,
            "default_pool_size": str(default_pool_size),
            "max_client_conn": str(max_client_conn),
            "ignore_startup_parameters": _IGNORED,
            # A failed server login is retried after 15 s by default: too slow for tests.
            "server_login_retry": "1",
            **{k: str(v) for k, v in extra.items()},
        }
        self._runtime: _Runtime | None = None
        self._finalizer: weakref.finalize[[], LocalPgBouncer] | None = None
        self._port = 0
        self._stopped = False

    # -- lifecycle

    def start(self) -> LocalPgBouncer:
        """Start PgBouncer and wait until a client can log in; a no-op when started."""
        if self._runtime is not None:
            return self
        binary = find_pgbouncer()
        run_as = _server_user()
        root = Path(tempfile.mkdtemp(prefix="pgfast-pgbouncer-"))
        runtime = _Runtime(root)
        # Finalizers and atexit do not run when this process is killed: the
        # watchdog child then stops PgBouncer and removes the temp dir.
        runtime.watchdog = _start_watchdog(root, root / _CONFIG)
        self._finalizer = weakref.finalize(self, runtime.stop)
        self._runtime = runtime
        try:
            run_as.chown(root)
            os.chmod(root, 0o700)
            self._write(root / _AUTH, self._auth_file(), run_as, mode=0o600)
            self._launch(binary, run_as, runtime)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop PgBouncer and remove its temp dir. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
            self._stopped = True

    def __enter__(self) -> LocalPgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = self._settings["pool_mode"]
        if self._runtime is None:
            return f"<LocalPgBouncer {mode} not started>"
        state = "stopped" if self._stopped else f"127.0.0.1:{self._port}"
        return f"<LocalPgBouncer {mode} {state}>"

    # -- addresses

    @property
    def port(self) -> int:
        """The port PgBouncer listens on (on 127.0.0.1)."""
        self._require()
        return self._port

    @property
    def url(self) -> str:
        """The connection string given, pointed at PgBouncer (same user, password, database)."""
        return rewrite_conninfo(self._url, "127.0.0.1", self.port)

    @property
    def admin_url(self) -> str:
        """The same, for PgBouncer's admin console (database ``pgbouncer``): it
        speaks only the simple query protocol, so use psycopg's ``ClientCursor``."""
        params = {k: v for k, v in conninfo_to_dict(self.url).items() if v is not None}
        params["dbname"] = "pgbouncer"
        return psycopg.conninfo.make_conninfo("", **params)

    # -- internals

    def _require(self) -> _Runtime:
        if self._runtime is None:
            raise ClusterError("LocalPgBouncer is not started: use `with LocalPgBouncer(url)`")
        if self._stopped:
            raise ClusterError("LocalPgBouncer is stopped")
        return self._runtime

    def _auth_file(self) -> str:
        server = self._server
        return _auth_line(server.user, server.password)

    def _config(self, root: Path) -> str:
        server = self._server
        target = (
            f"host={_quote_value('host', server.host)} port={_quote_value('port', server.port)}"
        )
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self._port),
            "unix_socket_dir": str(root),
            "auth_type": "scram-sha-256" if server.password else "trust",
            "auth_file": str(root / _AUTH),
            "admin_users": server.user,
            "pidfile": str(root / "pgbouncer.pid"),
            **self._settings,
        }
        lines = [
            "[databases]",
            f"* = {target}",  # every database name: the one of that name on the server
            "",
            "[pgbouncer]",
            *(f"{k} = {v}" for k, v in settings.items()),
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _write(path: Path, text: str, run_as: _RunAs, mode: int = 0o644) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        run_as.chown(path)

    def _launch(self, binary: Path, run_as: _RunAs, runtime: _Runtime, attempts: int = 3) -> None:
        """Start PgBouncer on a free port, retrying if another process takes it first."""
        root = runtime.root
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for attempt in range(attempts):
            self._port = _free_port()
            self._write(root / _CONFIG, self._config(root), run_as)
            with (root / _LOG).open("wb") as log:
                process = subprocess.Popen(
                    [str(binary), str(root / _CONFIG)],
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a terminal is for us, not for it
                    **run_as.popen_kwargs(),
                )
            runtime.process = process
            runtime.watch(process.pid)
            try:
                _poll("PgBouncer to listen", partial(self._listening, process), _START_TIMEOUT)
            except ClusterError as exc:
                tail = self._log_tail(root)
                if "Address already in use" in tail and attempt + 1 < attempts:
                    continue
                raise ClusterError(f"{exc}\n--- pgbouncer log ---\n{tail}") from None
            break
        try:
            with psycopg.connect(self.url, connect_timeout=10, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            server = f"{self._server.host}:{self._server.port}"
            raise ClusterError(
                f"cannot log in through PgBouncer to the server at {server}: {exc}\n"
                f"--- pgbouncer log ---\n{self._log_tail(root)}"
            ) from None

    def _listening(self, process: subprocess.Popen[bytes]) -> bool | None:
        if process.poll() is not None:
            raise ClusterError(f"PgBouncer exited with code {process.returncode}")
        with socket.create_connection(("127.0.0.1", self._port), timeout=1):
            return True

    @staticmethod
    def _log_tail(root: Path, lines: int = 20) -> str:
        try:
            text = (root / _LOG).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
