"""pgfast.testing: throwaway servers, run for real (primary + 2 streaming replicas)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

import pgfast.testing._local as local
from pgfast.testing import ClusterError, LocalCluster, find_pg_bin


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def postmaster_pids(directory: Path) -> set[int]:
    """The postmasters of the cluster under ``directory``."""
    return {int(p.read_text().split()[0]) for p in directory.glob("*/postmaster.pid")}


def cluster_pids(directory: Path) -> set[int]:
    """Every postmaster of the cluster under ``directory`` and all their children."""
    postmasters = postmaster_pids(directory)
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in postmasters:
            children.add(int(stat.parent.name))
    return postmasters | children


def query_one(url: str, sql: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def eventually(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh table ``t_<random>(x int)`` on the shared cluster."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (x int)")
    yield name
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def insert(url: str, table: str, x: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (%s)", [x])


def values(url: str, table: str) -> list[int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return [r[0] for r in conn.execute(f"SELECT x FROM {table} ORDER BY x")]


# --- without a server ------------------------------------------------------------


@pytest.mark.nodb
def test_bad_pg_bin_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGFAST_PG_BIN", str(tmp_path))
    with pytest.raises(ClusterError, match=r"PGFAST_PG_BIN=.*initdb"):
        find_pg_bin()


@pytest.mark.nodb
def test_nothing_found_lists_what_was_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGFAST_PG_BIN", raising=False)
    monkeypatch.setattr(local, "_SEARCHES", [("somewhere", lambda: [Path("/nonexistent")])])
    with pytest.raises(ClusterError) as info:
        find_pg_bin()
    assert "PGFAST_PG_BIN" in str(info.value)
    assert "somewhere: /nonexistent" in str(info.value)


@pytest.mark.nodb
def test_pg_bin_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_pg_bin()
    assert all((found / tool).exists() for tool in ("postgres", "initdb", "pg_ctl"))
    monkeypatch.setattr(local, "_SEARCHES", [])
    monkeypatch.setenv("PGFAST_PG_BIN", str(found))
    assert find_pg_bin() == found


@pytest.mark.nodb
@pytest.mark.parametrize("replicas", [-1, 1.5, True, "2"])
def test_bad_replica_count(replicas: object) -> None:
    with pytest.raises(ValueError, match="replicas"):
        LocalCluster(replicas=replicas)  # type: ignore[arg-type]


@pytest.mark.nodb
def test_not_started_is_a_clear_error() -> None:
    cluster = LocalCluster(replicas=1)
    with pytest.raises(ClusterError, match="not started"):
        cluster.primary_url  # noqa: B018
    assert "not started" in repr(cluster)


# --- the shared cluster (tests put back whatever they change) --------------------------


def test_urls_carry_a_real_password(pg_cluster: LocalCluster) -> None:
    urls = [pg_cluster.primary_url, *pg_cluster.replica_urls]
    assert len(urls) == 3
    parts = [urlsplit(u) for u in urls]
    assert {p.hostname for p in parts} == {"127.0.0.1"}
    assert len({p.port for p in parts}) == 3
    password = parts[0].password
    assert password and len(password) >= 16
    assert password not in repr(pg_cluster)
    wrong = urls[0].replace(password, "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_roles_of_the_servers(pg_cluster: LocalCluster) -> None:
    assert query_one(pg_cluster.primary_url, "SELECT pg_is_in_recovery()") is False
    assert (
        query_one(
            pg_cluster.primary_url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        is True
    )
    for url in pg_cluster.replica_urls:
        assert query_one(url, "SELECT pg_is_in_recovery()") is True
    streaming = query_one(
        pg_cluster.primary_url,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
    )
    assert streaming == 2


def test_servers_run_unprivileged(pg_cluster: LocalCluster) -> None:
    pids = cluster_pids(pg_cluster.directory)
    assert len(postmaster_pids(pg_cluster.directory)) >= 3
    uids = set()
    for pid in pids:
        # A short-lived child (a backend, a cancel) may have exited meanwhile.
        with contextlib.suppress(FileNotFoundError):
            uids.add(Path(f"/proc/{pid}").stat().st_uid)
    assert uids
    if os.geteuid() == 0:
        assert 0 not in uids
    else:
        assert uids == {os.geteuid()}


def test_row_on_primary_is_read_on_each_replica(pg_cluster: LocalCluster, table: str) -> None:
    insert(pg_cluster.primary_url, table, 1)
    pg_cluster.wait_for_replicas()
    for url in pg_cluster.replica_urls:
        assert values(url, table) == [1]


def test_paused_replica_sees_row_only_after_resume(pg_cluster: LocalCluster, table: str) -> None:
    pg_cluster.wait_for_replicas()  # the table exists everywhere
    paused, live = pg_cluster.replica_urls
    pg_cluster.pause_replay(0)
    try:
        insert(pg_cluster.primary_url, table, 2)
        pg_cluster.wait_for_replicas()  # waits for the live replica only
        assert values(live, table) == [2]
        time.sleep(0.3)
        assert values(paused, table) == []
    finally:
        pg_cluster.resume_replay(0)
    eventually(lambda: values(paused, table) == [2])


def test_stopped_replica_refuses_connections_then_comes_back(
    pg_cluster: LocalCluster, table: str
) -> None:
    url = pg_cluster.replica_urls[1]
    pg_cluster.stop_replica(1)
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        insert(pg_cluster.primary_url, table, 3)
    finally:
        pg_cluster.start_replica(1)
    pg_cluster.wait_for_replicas()
    assert values(url, table) == [3]


def test_restart_primary_keeps_the_url(pg_cluster: LocalCluster, table: str) -> None:
    url = pg_cluster.primary_url
    before = query_one(url, "SELECT pg_postmaster_start_time()")
    pg_cluster.restart_primary()
    assert pg_cluster.primary_url == url
    assert query_one(url, "SELECT pg_postmaster_start_time()") != before
    insert(url, table, 4)
    pg_cluster.wait_for_replicas()
    for replica in pg_cluster.replica_urls:
        assert values(replica, table) == [4]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_cpu_affinity_reaches_new_backends_and_restarted_servers() -> None:
    ours = os.sched_getaffinity(0)
    cpu = {max(ours)}
    with LocalCluster(replicas=1) as cluster:
        cluster.set_cpu_affinity(cpu)

        def backend_cpus(url: str) -> set[int]:
            with psycopg.connect(url) as conn:
                return os.sched_getaffinity(conn.info.backend_pid)

        assert backend_cpus(cluster.primary_url) == cpu
        assert backend_cpus(cluster.replica_urls[0]) == cpu
        cluster.restart_primary()
        cluster.stop_replica(0)
        cluster.start_replica(0)
        assert backend_cpus(cluster.primary_url) == cpu
        assert backend_cpus(cluster.replica_urls[0]) == cpu
    assert os.sched_getaffinity(0) == ours  # the caller's own is left alone


def test_wait_for_replicas_is_quick_on_an_idle_cluster(pg_cluster: LocalCluster) -> None:
    # A WAL segment switch leaves the primary idle with its insert position past
    # the new segment's header, which no replica ever reports as replayed: a
    # wait for that position would last until the next WAL record (up to 15 s).
    pg_cluster.wait_for_replicas()
    query_one(pg_cluster.primary_url, "SELECT pg_switch_wal()")
    for _ in range(3):
        started = time.monotonic()
        pg_cluster.wait_for_replicas()
        assert time.monotonic() - started < 0.5


def test_wait_for_replicas_covers_asynchronous_commits(
    pg_cluster: LocalCluster, table: str
) -> None:
    # The servers run with synchronous_commit=off: a commit may not be flushed
    # (nor sent to replicas) yet when the caller moves on.
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        for x in range(5):
            conn.execute(f"INSERT INTO {table} VALUES (%s)", [x])
            pg_cluster.wait_for_replicas()
            for url in pg_cluster.replica_urls:
                assert values(url, table) == list(range(x + 1))


def test_failover_then_promote() -> None:
    cluster = LocalCluster(replicas=2).start()
    try:
        old_primary, (first, second) = cluster.primary_url, cluster.replica_urls
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(old_primary, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {name} (x int)")
        insert(old_primary, name, 1)

        cluster.failover(to=0)
        assert cluster.primary_url == first and cluster.replica_urls == [second]
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(old_primary, connect_timeout=2)  # stopped
        assert query_one(first, "SELECT pg_is_in_recovery()") is False
        assert values(first, name) == [1]  # nothing acknowledged was lost
        insert(first, name, 2)
        cluster.wait_for_replicas()
        assert values(second, name) == [1, 2]  # it streams from the new primary
        streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        assert query_one(first, streaming) == 1
        # Indexes shifted: replica 0 is the other replica now.
        cluster.stop_replica(0)
        insert(first, name, 3)
        cluster.start_replica(0)
        cluster.restart_primary()
        cluster.wait_for_replicas()
        assert values(second, name) == [1, 2, 3]

        cluster.promote(0)  # the other replica: two primaries now
        assert cluster.primary_url == second and cluster.replica_urls == []
        assert query_one(second, "SELECT pg_is_in_recovery()") is False
        assert query_one(first, "SELECT pg_is_in_recovery()") is False
        with pytest.raises(IndexError, match="0 replica"):
            cluster.promote(0)
        cluster.wait_for_replicas()  # no replica left: nothing to wait for

        # Every node, the stopped old primary and the former one included, is
        # stopped from the saved state (as `pgfast down` does).
        directory, pids = cluster.directory, cluster_pids(cluster.directory)
        assert len(postmaster_pids(directory)) == 2
        state = cluster.detach()
        local.stop_from_state(state)
        assert_gone(directory, pids)
    finally:
        cluster.stop()


def test_replica_index_is_checked(pg_cluster: LocalCluster) -> None:
    with pytest.raises(IndexError, match="2 replica"):
        pg_cluster.stop_replica(2)


def test_pg_url_fixture_connects(pg_url: str) -> None:
    assert query_one(pg_url, "SELECT 1") == 1
    if "DATABASE_URL" in os.environ:
        assert pg_url == os.environ["DATABASE_URL"]


# --- cleanup --------------------------------------------------------------------


def assert_gone(directory: Path, pids: set[int]) -> None:
    assert pids, "no server processes were recorded"
    assert not directory.exists()
    assert [p for p in pids if alive(p)] == []


def test_stop_leaves_nothing_running() -> None:
    cluster = LocalCluster(replicas=1).start()
    directory, pids = cluster.directory, cluster_pids(cluster.directory)
    # Short-lived children (a backend, an autovacuum worker) may already be
    # gone; the postmasters must be running.
    postmasters = postmaster_pids(directory)
    assert len(postmasters) == 2 and all(alive(p) for p in postmasters)
    assert len(pids) >= 6
    cluster.stop()
    assert_gone(directory, pids)
    cluster.stop()  # idempotent
    with pytest.raises(ClusterError, match="stopped"):
        cluster.primary_url  # noqa: B018
    assert "stopped" in repr(cluster)


def test_exception_in_with_body_stops_everything() -> None:
    seen: dict[str, object] = {}
    with pytest.raises(KeyError, match="boom"), LocalCluster() as cluster:
        seen["directory"], seen["pids"] = cluster.directory, cluster_pids(cluster.directory)
        raise KeyError("boom")
    assert_gone(seen["directory"], seen["pids"])  # type: ignore[arg-type]


def test_failure_while_starting_tears_down(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fail(self: LocalCluster, i: int) -> None:
        seen["directory"], seen["pids"] = self.directory, cluster_pids(self.directory)
        raise ClusterError("replica never streamed")

    monkeypatch.setattr(LocalCluster, "_wait_streaming", fail)
    with pytest.raises(ClusterError, match="never streamed"):
        LocalCluster(replicas=1).start()
    assert_gone(seen["directory"], seen["pids"])  # type: ignore[arg-type]


def test_startup_error_shows_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str) -> str:
        made.append(Path(real_mkdtemp(prefix=prefix)))
        return str(made[-1])

    monkeypatch.setitem(local._SETTINGS, "shared_buffers", "'lots'")
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(ClusterError) as info:
        LocalCluster().start()
    message = str(info.value)
    assert "primary did not start" in message
    assert "log tail" in message and "shared_buffers" in message
    cluster_dirs = [d for d in made if not d.name.startswith("pgfast-template")]
    assert len(cluster_dirs) == 1 and not cluster_dirs[0].exists()


def test_interpreter_exit_stops_a_forgotten_cluster() -> None:
    script = (
        "from pgfast.testing import LocalCluster\n"
        "cluster = LocalCluster(replicas=1).start()\n"
        "print(cluster.directory, flush=True)\n"
        "input()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        directory = Path(child.stdout.readline().strip())
        pids = cluster_pids(directory)
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    assert_gone(directory, pids)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_owner_leaves_nothing_running(how: signal.Signals) -> None:
    # Finalizers and atexit never run here: the cluster's watchdog stops it.
    script = (
        "from pgfast.testing import LocalCluster\n"
        "from pgfast.testing._local import _templates\n"
        "cluster = LocalCluster(replicas=1).start()\n"
        "template = next(iter(_templates.values())).root\n"
        "print(cluster.directory, template, flush=True)\n"
        "input()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        directory, template = map(Path, child.stdout.readline().split())
        pids = cluster_pids(directory)
        assert len(pids) >= 2 and template.exists()
        child.send_signal(how)
        assert child.wait(timeout=10) != 0
    eventually(lambda: not directory.exists() and not template.exists(), timeout=30)
    assert_gone(directory, pids)
