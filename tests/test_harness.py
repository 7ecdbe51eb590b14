"""pgfast.testing's fault injection: FaultProxy and LocalPgBouncer, against a real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgfast.testing._pgbouncer as pgbouncer_module
from pgfast.testing import ClusterError, FaultProxy, LocalPgBouncer, find_pgbouncer


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def value(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


class Background:
    """``fn()`` in a daemon thread: its result, or the exception it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def done_within(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(pg_url) as proxy:
        yield proxy


# --- FaultProxy ----------------------------------------------------------------------


@pytest.mark.nodb
def test_url_for_points_at_the_proxy_and_keeps_every_other_parameter() -> None:
    with FaultProxy("127.0.0.1", 5432) as proxy:
        port = proxy.port
        url = "postgresql://u:p%40ss@db.example:6432/app?sslmode=disable&options=-c%20x%3Dy"
        assert proxy.url_for(url) == (
            f"postgresql://u:p%40ss@127.0.0.1:{port}/app?sslmode=disable&options=-c%20x%3Dy"
        )
        # Query parameters naming the server would win over the authority: dropped.
        assert proxy.url_for("postgres://h1:1,h2:2/db?host=h3&hostaddr=10.0.0.1&port=9&x=1") == (
            f"postgres://127.0.0.1:{port}/db?x=1"
        )
        assert proxy.url_for("postgresql://[::1]:5432") == f"postgresql://127.0.0.1:{port}"
        rewritten = psycopg.conninfo.conninfo_to_dict(
            proxy.url_for("host=db hostaddr=10.0.0.1 port=6432 user=u password='a b' dbname=app")
        )
        assert rewritten == {
            "host": "127.0.0.1",
            "port": str(port),
            "user": "u",
            "password": "a b",
            "dbname": "app",
        }
        assert proxy.url_for("") == f"host=127.0.0.1 port={port}"


@pytest.mark.nodb
def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="port"):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(ValueError, match="single host"):
        FaultProxy.for_url("postgresql://a,b/db")
    with pytest.raises(ValueError, match="TCP host"):
        FaultProxy.for_url("postgresql://u:secret@%2Fvar%2Frun%2Fpostgresql/db")
    with pytest.raises(RuntimeError, match="not started"):
        _ = FaultProxy("127.0.0.1", 5432).port
    with FaultProxy("127.0.0.1", 5432) as proxy:
        with pytest.raises(ValueError, match="delay"):
            proxy.delay(-1)
        with pytest.raises(ValueError, match="delay"):
            proxy.delay(float("nan"))
        with pytest.raises(ValueError, match="every"):
            proxy.reset_connects(every=-1)
    with pytest.raises(RuntimeError, match="stopped"):
        proxy.stall()
    with pytest.raises(RuntimeError, match="stopped"):
        proxy.start()


def test_forwards_queries_and_counts_connections(proxy: FaultProxy, pg_url: str) -> None:
    assert (proxy.connections, proxy.active) == (0, 0)
    with connect(proxy.url_for(pg_url)) as conn:
        assert value(conn, "SELECT 1") == 1
        # Larger than the proxy's buffers in both directions.
        big = value(conn, "SELECT repeat('x', 3000000)")
        assert len(big) == 3_000_000
        echoed = conn.execute("SELECT length(%s::text)", ["y" * 3_000_000]).fetchone()
        assert echoed == (3_000_000,)
        assert (proxy.connections, proxy.active) == (1, 1)
    eventually(lambda: proxy.active == 0)
    assert proxy.connections == 1


def test_delay_adds_latency_each_way(proxy: FaultProxy, pg_url: str) -> None:
    with connect(proxy.url_for(pg_url)) as conn:
        proxy.delay(0.1)
        start = time.monotonic()
        value(conn, "SELECT 1")
        elapsed = time.monotonic() - start
        assert 0.2 <= elapsed < 1.5  # one chunk each way
        proxy.delay(0)
        start = time.monotonic()
        value(conn, "SELECT 1")
        assert time.monotonic() - start < 0.2  # the delay is gone: well under 2 x 0.1 s


def test_stall_holds_bytes_until_resume(proxy: FaultProxy, pg_url: str) -> None:
    url = proxy.url_for(pg_url)
    with connect(url) as conn:
        proxy.stall()
        try:
            query = Background(lambda: value(conn, "SELECT 42"))
            opening = Background(lambda: connect(url))  # a new connection stalls as well
            assert not query.done_within(0.3)
            assert not opening.done_within(0)
            assert proxy.active == 2  # accepted, not forwarded
        finally:
            proxy.resume()  # else closing conn would wait for the stalled query forever
        assert query.done_within(5) and opening.done_within(5)
        assert (query.error, query.result) == (None, 42)
        assert opening.error is None
        with opening.result as other:
            assert value(other, "SELECT 1") == 1


def test_reset_all_aborts_open_connections(proxy: FaultProxy, pg_url: str) -> None:
    url = proxy.url_for(pg_url)
    with connect(url) as first, connect(url) as second:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        eventually(lambda: proxy.active == 3)
        assert proxy.reset_all() == 3
        assert proxy.active == 0
        for conn in (first, second):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with raw, pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN
            raw.recv(1)
    with connect(url) as conn:  # new connections are unaffected
        assert value(conn, "SELECT 1") == 1


def test_reset_connects_fails_one_in_every_n(proxy: FaultProxy, pg_url: str) -> None:
    url = proxy.url_for(pg_url)
    with connect(url) as already_open:
        proxy.reset_connects(every=2)
        outcomes = []
        for _ in range(4):
            try:
                connect(url).close()
                outcomes.append("ok")
            except psycopg.OperationalError:
                outcomes.append("reset")
        assert outcomes == ["reset", "ok", "reset", "ok"]
        assert value(already_open, "SELECT 1") == 1  # open connections are untouched
        proxy.reset_connects(every=0)
        connect(url).close()
    assert proxy.connections == 6


def test_max_connections_and_stop_release_everything(pg_url: str) -> None:
    proxy = FaultProxy.for_url(pg_url, max_connections=1).start()
    url, port = proxy.url_for(pg_url), proxy.port
    conn = connect(url)
    with pytest.raises(psycopg.OperationalError):
        connect(url)  # over the limit: reset on arrival
    proxy.stop()
    proxy.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert refuses(port)
    assert not any(t.name == "pgfast-FaultProxy" and t.is_alive() for t in threading.enumerate())


# --- LocalPgBouncer ------------------------------------------------------------------


def test_pg_bouncer_fixture_pools_in_transaction_mode(
    pg_bouncer: LocalPgBouncer, pg_url: str
) -> None:
    assert pg_bouncer.url.startswith("postgresql://")
    with connect(pg_bouncer.url) as conn:
        assert value(conn, "SELECT 1") == 1
        user = psycopg.conninfo.conninfo_to_dict(pg_url)["user"]
        assert value(conn, "SELECT current_user") == user
    with psycopg.connect(
        pg_bouncer.admin_url, autocommit=True, cursor_factory=psycopg.ClientCursor
    ) as admin:
        cur = admin.execute("SHOW POOLS")
        columns = [c.name for c in cur.description or []]
        modes = {row[columns.index("database")]: row[columns.index("pool_mode")] for row in cur}
    assert modes["postgres"] == "transaction"


def test_transaction_mode_shares_server_connections(pg_url: str) -> None:
    with (
        LocalPgBouncer(pg_url, default_pool_size=2) as bouncer,
        connect(bouncer.url) as a,
        connect(bouncer.url) as b,
    ):
        with a.transaction():
            in_a = value(a, "SELECT pg_backend_pid()")
            with b.transaction():  # concurrent transactions: two server connections
                in_b = value(b, "SELECT pg_backend_pid()")
            assert in_a != in_b
            assert value(a, "SELECT pg_backend_pid()") == in_a  # kept until COMMIT
        # Between transactions a client holds no server connection: both are
        # idle and either may serve each client's next statement.
        assert {value(a, "SELECT pg_backend_pid()") for _ in range(3)} <= {in_a, in_b}
    with (
        LocalPgBouncer(pg_url, default_pool_size=1) as bouncer,
        connect(bouncer.url) as a,
        connect(bouncer.url) as b,
    ):
        assert value(a, "SELECT pg_backend_pid()") == value(b, "SELECT pg_backend_pid()")


def test_session_mode_gives_each_client_its_own_backend(pg_url: str) -> None:
    with (
        LocalPgBouncer(pg_url, pool_mode="session", default_pool_size=2) as bouncer,
        connect(bouncer.url) as a,
        connect(bouncer.url) as b,
    ):
        pid_a = value(a, "SELECT pg_backend_pid()")
        assert value(b, "SELECT pg_backend_pid()") != pid_a
        assert value(a, "SELECT pg_backend_pid()") == pid_a


def test_options_are_accepted_and_dropped(pg_bouncer: LocalPgBouncer) -> None:
    with psycopg.connect(pg_bouncer.url, autocommit=True, options="-c search_path=elsewhere") as c:
        assert value(c, "SHOW search_path") == '"$user", public'


def test_stop_kills_pgbouncer_and_removes_its_files(pg_url: str) -> None:
    bouncer = LocalPgBouncer(pg_url).start()
    runtime = bouncer._runtime
    assert runtime is not None and runtime.process is not None
    port, root, process = bouncer.port, runtime.root, runtime.process
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        assert Path(f"/proc/{process.pid}").stat().st_uid != 0
    bouncer.stop()
    bouncer.stop()  # idempotent
    assert process.poll() is not None
    assert not root.exists()
    assert refuses(port)
    with pytest.raises(ClusterError, match="stopped"):
        _ = bouncer.url


def test_watchdog_stops_pgbouncer_when_its_owner_is_killed(pg_url: str) -> None:
    script = (
        "import os, sys\n"
        "from pgfast.testing import LocalPgBouncer\n"
        "b = LocalPgBouncer(sys.argv[1]).start()\n"
        "print(b._runtime.process.pid, b._runtime.root, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    owner = subprocess.run(
        [sys.executable, "-c", script, pg_url], capture_output=True, text=True, timeout=30
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    pid, root = owner.stdout.split()
    eventually(lambda: not Path(f"/proc/{pid}").exists() and not Path(root).exists(), 10)


@pytest.mark.nodb
def test_missing_pgbouncer_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(pgbouncer_module, "_SEARCH", ("/nonexistent/pgbouncer",))
    with pytest.raises(ClusterError, match=r"pgbouncer not found.*apt-get install pgbouncer"):
        find_pgbouncer()
    with pytest.raises(ClusterError, match="pgbouncer not found"):
        LocalPgBouncer("postgresql://u:secret@127.0.0.1:1/db").start()


@pytest.mark.nodb
def test_bad_pgbouncer_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="pool_mode"):
        LocalPgBouncer("postgresql://u@h/db", pool_mode="bogus")
    with pytest.raises(ValueError, match="default_pool_size"):
        LocalPgBouncer("postgresql://u@h/db", default_pool_size=0)
    with pytest.raises(ValueError, match="setting name"):
        LocalPgBouncer("postgresql://u@h/db", settings={"a = b\n[x]": "1"})
    with pytest.raises(ValueError, match="listen_addr is chosen by LocalPgBouncer"):
        LocalPgBouncer("postgresql://u@h/db", settings={"listen_addr": "0.0.0.0"})
    with pytest.raises(ClusterError, match="single server"):
        LocalPgBouncer("postgresql://u@h1,h2/db")
