"""The cluster's routing parts without a cluster object: the read-only classifier,
write tokens, what an error means for a node, lag and roles from the health probes.

The sync and async clusters themselves are tested by test_cluster_async.py and its
generated twin test_cluster_sync.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import twin
from hypothesis import given, settings
from hypothesis import strategies as st

import pgfast
from pgfast import _impl
from pgfast._cluster_common import (
    ClusterState,
    Failure,
    classify_failure,
    create_cluster,
    format_lsn,
    is_read_only,
    parse_lsn,
)
from pgfast._factories import create_async_pool, create_pool
from pgfast._sql import sql
from tests._cluster import FAKE_URL

nodb = pytest.mark.nodb


@nodb
def test_a_clusters_pools_are_all_sync_or_all_async() -> None:
    sync_pool, async_pool = create_pool(FAKE_URL), create_async_pool(FAKE_URL)
    for primary, replica in ((sync_pool, async_pool), (async_pool, sync_pool)):
        with pytest.raises(TypeError, match=r"all sync .* or all async"):
            create_cluster(primary, [replica])  # type: ignore[call-overload]


READ_ONLY_CASES = [
    ("SELECT 1", True),
    ("/* DELETE */ SELECT 'INSERT'", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT nextval('s')", False),
    ("INSERT INTO t VALUES (1)", False),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
    ("SELECT 1 INTO t2", False),
]


@nodb
@pytest.mark.parametrize(("text", "expected"), READ_ONLY_CASES)
def test_is_read_only_wrapper_agrees_with_both_twins(text: str, expected: bool, impl: str) -> None:
    assert is_read_only(sql.unsafe(text)) is expected
    assert twin("_classify", impl).is_read_only(text) is expected


@nodb
def test_is_read_only_takes_sql_queries_only() -> None:
    with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
        is_read_only("SELECT 1")  # type: ignore[arg-type]
    # Parameters never change the answer: only the text is classified.
    assert is_read_only(sql("SELECT * FROM t WHERE note = {}", "DELETE FROM t"))


@nodb
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="SELCTINRUPDAFOWH ;'\"$-/*()1x\n", max_size=60))
def test_is_read_only_wrapper_is_the_classifier(text: str) -> None:
    assert is_read_only(sql.unsafe(text)) is bool(_impl.classify.is_read_only(text))


@nodb
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@nodb
def test_lsn_parsing() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert parse_lsn("0/0") == 0
    for bad in ("", "16", "16/", "/1", "G/1", "1/2/3", "123456789/0", " 0/1", "0/1\n"):
        with pytest.raises(ValueError, match="invalid write token"):
            parse_lsn(bad)
    with pytest.raises(TypeError, match="write token is a str"):
        parse_lsn(5)  # type: ignore[arg-type]


E = psycopg.errors
FAILURES: list[tuple[BaseException, Failure]] = [
    # the node cannot be reached or used
    (pgfast.PoolTimeoutError("busy"), Failure.NODE_DOWN),
    (pgfast.PoolClosedError("closed"), Failure.NODE_DOWN),
    (psycopg.OperationalError("server closed the connection unexpectedly"), Failure.NODE_DOWN),
    (E.ConnectionFailure(), Failure.NODE_DOWN),  # 08006
    (E.ProtocolViolation(), Failure.NODE_DOWN),  # 08P01
    (E.AdminShutdown(), Failure.NODE_DOWN),  # 57P01
    (E.CrashShutdown(), Failure.NODE_DOWN),  # 57P02
    (E.CannotConnectNow(), Failure.NODE_DOWN),  # 57P03
    (E.DatabaseDropped(), Failure.NODE_DOWN),  # 57P04
    (E.IdleSessionTimeout(), Failure.NODE_DOWN),  # 57P05
    # only the primary can run it
    (E.ReadOnlySqlTransaction(), Failure.RERUN_ON_PRIMARY),  # 25006
    (E.FeatureNotSupported(), Failure.RERUN_ON_PRIMARY),  # 0A000
    (E.SerializationFailure(), Failure.RERUN_ON_PRIMARY),  # 40001
    (E.DeadlockDetected(), Failure.RERUN_ON_PRIMARY),  # 40P01
    (E.LockNotAvailable(), Failure.RERUN_ON_PRIMARY),  # 55P03
    # the query's own: psycopg makes classes 53-58 OperationalError, yet the node is fine
    (E.QueryCanceled(), Failure.QUERY_ERROR),  # 57014
    (E.OutOfMemory(), Failure.QUERY_ERROR),  # 53200
    (E.DiskFull(), Failure.QUERY_ERROR),  # 53100
    (E.ProgramLimitExceeded(), Failure.QUERY_ERROR),  # 54000
    (E.ObjectNotInPrerequisiteState(), Failure.QUERY_ERROR),  # 55000
    (E.IoError(), Failure.QUERY_ERROR),  # 58030
    (E.SyntaxError(), Failure.QUERY_ERROR),
    (E.UndefinedTable(), Failure.QUERY_ERROR),
    (psycopg.InterfaceError("the cursor is closed"), Failure.QUERY_ERROR),
    (ValueError(), Failure.QUERY_ERROR),
]


@nodb
@pytest.mark.parametrize(("exc", "expected"), FAILURES, ids=[type(e).__name__ for e, _ in FAILURES])
def test_failure_classification(exc: BaseException, expected: Failure) -> None:
    assert classify_failure(exc) is expected


def status(replay: str, age: float | None = None, receiver: str | None = "streaming") -> list[Any]:
    """A STATUS_SQL row of a standby."""
    return ["true", "on", replay, None if age is None else str(age), receiver, None]


def writable(position: str, timeline: int = 1) -> list[Any]:
    """A STATUS_SQL row of a primary."""
    return ["false", "off", position, None, None, f"{timeline:08X}"]


@nodb
def test_lag_rules() -> None:
    state = ClusterState(1, "round_robin", 1.0, False, True)
    state.record_status(1, status("0/100"), 10.0, 10.0)
    assert state.lag == [None, None]  # the primary's position is not known yet
    state.record_status(0, writable("0/100"), 10.0, 10.0)
    state.record_status(1, status("0/100", age=3600.0), 10.5, 10.5)
    assert state.lag == [0.0, 0.0]  # caught up: an old last commit means an idle primary
    assert state.eligible(0) == 0b10
    state.record_status(0, writable("0/200"), 11.0, 11.0)
    state.record_status(1, status("0/100", age=3600.0), 12.5, 12.5)
    assert state.lag[1] == 2.5  # last seen caught up at 10.0
    assert state.eligible(0) == 0
    state.record_status(1, status("0/180", age=0.25), 12.6, 12.6)
    assert state.lag[1] == 0.25  # its last replayed commit is a tighter bound
    state.record_status(1, status("0/200", receiver=None), 12.7, 12.7)
    assert state.lag[1] is None  # no WAL receiver: it cannot keep up
    state.record_status(1, status("0/200", receiver="unknown"), 12.8, 12.8)
    assert state.lag[1] == 0.0  # receiver hidden from this role: the positions decide
    assert state.writer == 0
    state.record_status(1, writable("0/210", timeline=2), 13.0, 13.0)
    assert state.writer == 1  # promoted: a higher timeline than the old primary's
    assert state.eligible(0) == 0  # a primary serves no reads as a replica
    assert [state.role(0), state.role(1)] == ["down", "primary"]


@nodb
def test_roles_follow_the_probes() -> None:
    state = ClusterState(2, "round_robin", None, False, True, ["p", "r0", "r1"])
    assert state.writer == 0 and state.replica_nodes() == [1, 2]
    assert [state.role(j) for j in range(3)] == ["primary", "replica", "replica"]
    # The given primary keeps its role until it has answered a probe.
    state.record_status(2, writable("0/300", timeline=2), 1.0, 1.0)
    assert state.writer == 0
    assert state.record_status(0, writable("0/200"), 1.0, 1.0) == 0  # changed, from node 0
    assert state.writer == 2 and state.primary == 2  # the highest timeline wins
    assert state.role(0) == "down"  # writable but not chosen: no writes, no reads
    assert state.replica_nodes() == [1]
    # The old primary goes away, then comes back in recovery: it serves reads.
    assert state.mark_down(0, "connection refused") is None  # the primary did not change
    assert "connection refused" in state.describe()
    state.record_status(0, status("0/300"), 2.0, 2.0)
    assert state.role(0) == "replica" and state.replica_nodes() == [1, 0]
    assert state.eligible(0) == 0b011
    # No writable node: no writer, but the last primary is remembered.
    assert state.mark_down(2, "no answer within 1 s") == 2
    assert state.writer == -1 and state.primary == 2
    assert state.describe() == (
        "p: standby (in recovery); r0: not probed yet; r1: down (no answer within 1 s)"
    )
    state.record_status(2, writable("0/310", timeline=2), 3.0, 3.0)
    assert state.writer == 2
    # Fenced with default_transaction_read_only: not in recovery, yet refusing writes.
    state.record_status(2, ["false", "on", "0/310", None, None, "00000002"], 4.0, 4.0)
    assert state.writer == -1 and state.role(2) == "down"
    assert "read-only" in state.describe()
