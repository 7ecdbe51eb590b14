"""High availability of the cluster, on real servers: roles found by the health
probes, writes through a failover, reads leaving a stalled replica.

Tests that fail over (or stop the primary) start their own primary + 2
replicas (``own``); the others use the shared ``pg_cluster`` and leave its
servers as they were.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from itertools import count, pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import pgfast
from pgfast import _cluster_sync
from pgfast._check import check
from pgfast._cluster_common import STATUS_SQL, create_cluster, probe_timeout
from pgfast._factories import create_async_pool, create_pool
from pgfast._sql import sql
from pgfast.testing import FaultProxy, LocalCluster
from tests._cluster import Recorder, recorded_pools
from tests._cluster import wait_until_sync as wait_until

INTERVAL = 0.2  # health_check_interval of these tests' clusters
WRITERS = 4


@pytest.fixture
def own() -> Iterator[LocalCluster]:
    """A primary + 2 replicas of this test's own, to fail over."""
    with LocalCluster(replicas=2) as cluster:
        yield cluster


@pytest.fixture
def ledger(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh table on the shared cluster."""
    name = f"ha_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint, writer int)")
    pg_cluster.wait_for_replicas()
    yield name
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def urls_of(cluster: LocalCluster) -> list[str]:
    return [cluster.primary_url, *cluster.replica_urls]


def create_ledger(cluster: LocalCluster) -> None:
    # No primary key: a write that ran twice would show as two rows.
    with psycopg.connect(cluster.primary_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id bigint, writer int)")
    cluster.wait_for_replicas()


def stop_postmaster(directory: Path, node: str) -> None:
    """Stop a server behind LocalCluster's back (fast shutdown), as a crash or an
    operator would, and wait until it is gone."""
    pid = int((directory / node / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGINT)
    wait_until(f"{node} stopped", lambda: not Path(f"/proc/{pid}").exists(), timeout=30)


class Outcomes:
    """What writers and readers were told, from any thread or task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[tuple[float, int]] = []  # (monotonic time, id)
        self.failed: list[tuple[int, BaseException]] = []
        self.reads = 0
        self.read_failures: list[BaseException] = []

    def ack(self, row_id: int) -> None:
        with self.lock:
            self.acked.append((time.monotonic(), row_id))

    def acked_after(self, moment: float) -> int:
        with self.lock:
            return sum(at > moment for at, _ in self.acked)

    def check(self, primary_url: str, failover_started: float) -> None:
        """Every acknowledged write is on ``primary_url`` exactly once, only writes in
        flight when the primary died failed, writes resumed soon, no read failed."""
        with psycopg.connect(primary_url, autocommit=True) as conn:
            rows = Counter(r[0] for r in conn.execute("SELECT id FROM ledger"))
        acked = {row_id for _, row_id in self.acked}
        failed = {row_id for row_id, _ in self.failed}
        assert self.read_failures == []
        assert self.reads > 0
        assert [row_id for row_id, n in rows.items() if n > 1] == []  # none ran twice
        assert acked - set(rows) == set()  # none acknowledged and lost
        assert set(rows) - acked - failed == set()  # nothing nobody asked for
        # At most one write per writer was in flight when the primary stopped;
        # each failure reached its caller as an error, none as a timeout.
        assert len(self.failed) <= WRITERS, self.failed
        assert not any(isinstance(exc, pgfast.NoPrimaryError) for _, exc in self.failed)
        times = sorted(at for at, _ in self.acked)
        assert times[0] < failover_started < times[-1]
        longest_pause = max(b - a for a, b in pairwise(times))
        assert longest_pause < 2.0 + 5 * INTERVAL, longest_pause


def check_roles_after_failover(db: Any, pools: list[Any]) -> None:
    stats = db.stats()
    assert stats["primary"]["role"] == "down"  # the stopped old primary
    assert [r["role"] for r in stats["replicas"]] == ["primary", "replica"]
    assert db.primary is pools[1]
    assert db.replicas == [pools[2]]


# -- writes and reads through a failover ---------------------------------------------


def test_threads_write_and_read_through_a_failover(own: LocalCluster) -> None:
    create_ledger(own)
    pools = [create_pool(u, connect_timeout=2) for u in urls_of(own)]
    seen = Outcomes()
    stop = threading.Event()
    with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:

        def writer(w: int) -> None:
            for n in count():
                if stop.is_set():
                    return
                row_id = w * 1_000_000 + n
                try:
                    db.execute(sql("INSERT INTO ledger VALUES ({}, {})", row_id, w))
                except Exception as exc:
                    with seen.lock:
                        seen.failed.append((row_id, exc))
                else:
                    seen.ack(row_id)

        def reader() -> None:
            while not stop.is_set():
                try:
                    db.query_value(sql("SELECT count(*) FROM ledger"))
                    seen.reads += 1
                except Exception as exc:
                    seen.read_failures.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            wait_until("writes going on", lambda: len(seen.acked) > 100)
            failover_started = time.monotonic()
            own.failover(to=0)
            done = time.monotonic()
            wait_until("writes on the new primary", lambda: seen.acked_after(done) > 100)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        check_roles_after_failover(db, pools)
    seen.check(own.primary_url, failover_started)


async def test_tasks_write_and_read_through_a_failover(own: LocalCluster) -> None:
    await asyncio.to_thread(create_ledger, own)
    pools = [create_async_pool(u, connect_timeout=2) for u in urls_of(own)]
    seen = Outcomes()
    stop = asyncio.Event()
    async with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:

        async def writer(w: int) -> None:
            for n in count():
                if stop.is_set():
                    return
                row_id = w * 1_000_000 + n
                try:
                    await db.execute(sql("INSERT INTO ledger VALUES ({}, {})", row_id, w))
                except Exception as exc:
                    seen.failed.append((row_id, exc))
                else:
                    seen.ack(row_id)

        async def reader() -> None:
            while not stop.is_set():
                try:
                    await db.query_value(sql("SELECT count(*) FROM ledger"))
                    seen.reads += 1
                except Exception as exc:
                    seen.read_failures.append(exc)

        async def until(what: str, check: Any) -> None:
            deadline = time.monotonic() + 20
            while not check():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        tasks += [asyncio.create_task(reader()) for _ in range(2)]
        try:
            await until("writes going on", lambda: len(seen.acked) > 100)
            failover_started = time.monotonic()
            await asyncio.to_thread(own.failover, 0)
            done = time.monotonic()
            await until("writes on the new primary", lambda: seen.acked_after(done) > 100)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        check_roles_after_failover(db, pools)
    await asyncio.to_thread(seen.check, own.primary_url, failover_started)


def test_a_multi_host_primary_follows_the_failover(own: LocalCluster) -> None:
    create_ledger(own)
    old, first, _ = (urlsplit(u) for u in urls_of(own))
    primary = create_pool(
        f"host=127.0.0.1,127.0.0.1 port={old.port},{first.port} user={old.username} "
        f"password={old.password} dbname=postgres target_session_attrs=read-write",
        connect_timeout=2,
    )
    replica = create_pool(own.replica_urls[1], connect_timeout=2)
    with create_cluster(primary, [replica], health_check_interval=INTERVAL) as db:
        db.execute(sql("INSERT INTO ledger VALUES (1, 0)"))
        own.failover(to=0)
        db.execute(sql("INSERT INTO ledger VALUES (2, 0)"))  # waits for the pool to reconnect
        wait_until("roles", lambda: db.stats()["primary"]["role"] == "primary")
        assert db.stats()["replicas"][0]["role"] == "replica"
        assert db.primary is primary
    with psycopg.connect(own.primary_url) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == [1, 2]


def test_without_a_promotion_writes_fail_after_failover_timeout(own: LocalCluster) -> None:
    create_ledger(own)
    urls = urls_of(own)
    pools = [create_pool(u, connect_timeout=2) for u in urls]
    with create_cluster(
        pools[0], pools[1:], health_check_interval=INTERVAL, failover_timeout=1.5
    ) as db:
        db.execute(sql("INSERT INTO ledger VALUES (1, 0)"))
        stop_postmaster(own.directory, "primary")
        for _ in range(2):  # the primary not yet known to be down, then known down
            started = time.monotonic()
            with pytest.raises(pgfast.NoPrimaryError) as info:
                db.execute(sql("INSERT INTO ledger VALUES (2, 0)"))
            elapsed = time.monotonic() - started
            assert 1.5 <= elapsed < 1.5 + INTERVAL + probe_timeout(INTERVAL) + 1.0, elapsed
        message = str(info.value)
        assert "failover_timeout=1.5 s" in message
        for url in urls:
            assert f"port={urlsplit(url).port}" in message  # every node is named...
        assert message.count("standby (in recovery)") == 2  # ...with what it answered
        assert "primary 'user=" in message and "down (health probe failed" in message
        assert "\n" not in message
        password = urlsplit(urls[0]).password
        assert password and password not in message
        for _ in range(10):  # reads go on
            assert db.query_value(sql("SELECT count(*) FROM ledger")) == 1
        stats = db.stats()
        assert stats["primary"]["role"] == "down"
        assert [r["role"] for r in stats["replicas"]] == ["replica", "replica"]
        assert db.primary is pools[0]  # the last known primary


def test_of_two_primaries_the_promoted_one_takes_the_writes() -> None:
    with LocalCluster(replicas=2) as own:
        create_ledger(own)
        old = own.primary_url
        pools = [create_pool(u, connect_timeout=2) for u in urls_of(own)]
        with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:
            db.execute(sql("INSERT INTO ledger VALUES (1, 0)"))
            own.wait_for_replicas()
            own.promote(0)  # the old primary keeps running: a split brain
            wait_until("roles", lambda: db.stats()["replicas"][0]["role"] == "primary")
            db.execute(sql("INSERT INTO ledger VALUES (2, 0)"))
            stats = db.stats()
            assert stats["primary"]["role"] == "down" and stats["primary"]["up"]
            assert stats["replicas"][1]["role"] == "replica"
            assert db.primary is pools[1]
        for url, ids in ((old, [1]), (own.primary_url, [1, 2])):
            with psycopg.connect(url) as conn:
                assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == ids
        # `pgfast check` says which one a cluster writes to, and that something is wrong.
        out = io.StringIO()
        assert check([old, *urls_of(own)], out) == 1
        lines = out.getvalue().splitlines()
        assert "(timeline 1)" in lines[0] and "SUPERSEDED" in lines[0]
        assert "(timeline 2)" in lines[1] and "SUPERSEDED" not in lines[1]
        assert "standby" in lines[2]


# -- roles found by the probes, on the shared cluster -----------------------------------


def test_roles_are_checked_not_assumed(pg_cluster: LocalCluster, ledger: str) -> None:
    # Given the wrong way round: a standby as the primary, the primary as a replica.
    rec = Recorder(3)
    primary, first, second = recorded_pools(pg_cluster, rec, create_pool)
    with create_cluster(second, [primary, first], health_check_interval=0.1) as db:
        # The first write may reach the standby (refused with 25006, nothing
        # written) before a probe has answered: it then runs on the real primary.
        db.execute(sql.unsafe(f"INSERT INTO {ledger} VALUES (1, 0)"))
        wait_until("roles found", lambda: db.stats()["primary"]["role"] == "replica")
        stats = db.stats()
        assert [r["role"] for r in stats["replicas"]] == ["primary", "replica"]
        assert db.primary is primary
        assert db.replicas == [first, second]  # then the given primary, demoted
        for n in range(2, 6):
            db.execute(sql.unsafe(f"/* write */ INSERT INTO {ledger} VALUES ({n}, 0)"))
        for _ in range(10):
            db.query_value(sql.unsafe(f"/* read */ SELECT count(*) FROM {ledger}"))
        assert rec.counts("/* write */") == [4, 0, 0]
        assert rec.counts("/* read */") == [0, 5, 5]
        assert rec.errors[1] == rec.errors[0] == []
        assert set(rec.errors[2]) <= {"25006"}
    with psycopg.connect(pg_cluster.primary_url) as conn:
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {ledger} ORDER BY id")]
    assert ids == [1, 2, 3, 4, 5]


def test_a_write_refused_by_a_demoted_primary_runs_on_the_new_one(
    pg_cluster: LocalCluster, ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow probes and a warm connection: the write reaches the standby given as
    # primary before any probe has answered, and is refused there (25006).
    slow = b"SELECT s.* FROM (" + STATUS_SQL + b") s, pg_sleep(0.3) z"
    monkeypatch.setattr(_cluster_sync, "STATUS_SQL", slow)
    rec = Recorder(3)
    primary, first, second = recorded_pools(pg_cluster, rec, create_pool)
    second.query(sql("SELECT 1"))
    calls = 0

    def write(tx: pgfast.Transaction) -> None:
        nonlocal calls
        calls += 1
        tx.execute(sql.unsafe(f"INSERT INTO {ledger} VALUES (") + sql("{}, 0)", calls))

    with create_cluster(second, [primary, first], health_check_interval=INTERVAL) as db:
        db.tx(write)
        assert db.primary is primary
    assert calls == 2  # run again from the start, on the real primary
    assert rec.errors == [[], [], ["25006"]]
    with psycopg.connect(pg_cluster.primary_url) as conn:
        assert [r[0] for r in conn.execute(f"SELECT id FROM {ledger}")] == [2]


def test_a_read_only_transaction_refusing_a_write_is_the_callers_error(
    pg_cluster: LocalCluster, ledger: str
) -> None:
    # SQLSTATE 25006 from a primary that is still writable: no failover to wait
    # for, so the error is raised after one health round, and nothing runs again.
    pools = [create_pool(u) for u in urls_of(pg_cluster)]
    calls = 0

    def write(tx: pgfast.Transaction) -> None:
        nonlocal calls
        calls += 1
        tx.execute(sql("SET TRANSACTION READ ONLY"))
        tx.execute(sql.unsafe(f"INSERT INTO {ledger} VALUES (1, 0)"))

    with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db.tx(write)
        assert time.monotonic() - started < 5
        assert calls == 1
        assert db.stats()["primary"]["role"] == "primary"


def test_servers_refusing_the_full_probe_are_asked_their_role_only(
    pg_cluster: LocalCluster,
    ledger: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As on a managed service lacking one of the probe's functions: the node is
    # up, it just cannot answer that query.
    monkeypatch.setattr(_cluster_sync, "STATUS_SQL", b"SELECT pgfast_no_such_function()")
    rec = Recorder(3)
    pools = recorded_pools(pg_cluster, rec, create_pool)
    with create_cluster(pools[0], pools[1:], health_check_interval=0.1) as db:
        db.execute(sql.unsafe(f"INSERT INTO {ledger} VALUES (1, 0)"))
        time.sleep(0.5)  # a few rounds
        stats = db.stats()
        assert [stats["primary"]["role"]] + [r["role"] for r in stats["replicas"]] == [
            "primary",
            "replica",
            "replica",
        ]
        assert all(r["up"] and r["lag"] is None for r in stats["replicas"])  # not measured
        for _ in range(4):
            db.query_value(sql.unsafe(f"/* read */ SELECT count(*) FROM {ledger}"))
        assert rec.counts("/* read */") == [0, 2, 2]
    refusals = [r for r in caplog.records if "refused the health probe" in r.getMessage()]
    assert len(refusals) == 3  # once per node
    assert "pgfast_no_such_function" in refusals[0].getMessage()


# -- reads leave a stalled replica ------------------------------------------------


def test_threads_reading_leave_a_stalled_replica(pg_cluster: LocalCluster) -> None:
    with FaultProxy.for_url(pg_cluster.replica_urls[0]) as proxy:
        urls = [pg_cluster.primary_url, proxy.url_for(pg_cluster.replica_urls[0])]
        urls.append(pg_cluster.replica_urls[1])
        pools = [create_pool(u, connect_timeout=2) for u in urls]
        pool = ThreadPoolExecutor(50)
        with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:
            try:
                for i in range(20):
                    assert db.query_value(sql("SELECT {}::int", i)) == i
                wait_until("measured", lambda: db.stats()["replicas"][0]["lag"] == 0)
                proxy.stall()
                started = time.monotonic()
                futures = [
                    pool.submit(db.query_value, sql("SELECT {}::int, pg_sleep(0.01)", i))
                    for i in range(50)
                ]
                bound = INTERVAL + probe_timeout(INTERVAL) + 3.0
                wait_futures(futures, timeout=bound + 5)
                elapsed = time.monotonic() - started
                assert all(f.done() for f in futures), "reads still waiting on the stalled replica"
                assert [f.result() for f in futures] == list(range(50))
                assert elapsed < bound, elapsed
                stats = db.stats()["replicas"]
                assert stats[0]["role"] == "down" and stats[1]["role"] == "replica"
                proxy.resume()
                wait_until("replica 0 back", lambda: db.stats()["replicas"][0]["up"])
            finally:
                proxy.resume()
                pool.shutdown()


async def test_tasks_reading_leave_a_stalled_replica(pg_cluster: LocalCluster) -> None:
    with FaultProxy.for_url(pg_cluster.replica_urls[0]) as proxy:
        urls = [pg_cluster.primary_url, proxy.url_for(pg_cluster.replica_urls[0])]
        urls.append(pg_cluster.replica_urls[1])
        pools = [create_async_pool(u, connect_timeout=2) for u in urls]
        async with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:
            try:
                for i in range(20):
                    assert await db.query_value(sql("SELECT {}::int", i)) == i
                proxy.stall()
                started = time.monotonic()
                reads = [db.query_value(sql("SELECT {}::int", i)) for i in range(50)]
                bound = INTERVAL + probe_timeout(INTERVAL) + 3.0
                results = await asyncio.wait_for(asyncio.gather(*reads), bound + 5)
                elapsed = time.monotonic() - started
                assert results == list(range(50))
                assert elapsed < bound, elapsed
                assert db.stats()["replicas"][0]["role"] == "down"
            finally:
                proxy.resume()


def test_sync_probes_run_concurrently(pg_cluster: LocalCluster) -> None:
    # Both replicas stall at once: probed one after the other, the second would
    # be found out one probe timeout after the first.
    with (
        FaultProxy.for_url(pg_cluster.replica_urls[0]) as first,
        FaultProxy.for_url(pg_cluster.replica_urls[1]) as second,
    ):
        replicas = zip((first, second), pg_cluster.replica_urls, strict=True)
        urls = [pg_cluster.primary_url, *(p.url_for(u) for p, u in replicas)]
        pools = [create_pool(u, connect_timeout=2) for u in urls]
        with create_cluster(pools[0], pools[1:], health_check_interval=INTERVAL) as db:
            try:
                db.query_value(sql("SELECT 1"))
                wait_until("measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"]))
                first.stall()
                second.stall()
                down_at: list[float | None] = [None, None]
                deadline = time.monotonic() + 10
                while None in down_at and time.monotonic() < deadline:
                    for i, replica in enumerate(db.stats()["replicas"]):
                        if down_at[i] is None and not replica["up"]:
                            down_at[i] = time.monotonic()
                    time.sleep(0.01)
                assert down_at[0] is not None and down_at[1] is not None
                assert abs(down_at[0] - down_at[1]) < probe_timeout(INTERVAL) / 2
            finally:
                first.resume()
                second.resume()
