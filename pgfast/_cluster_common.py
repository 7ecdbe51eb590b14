"""Pieces shared by ``AsyncCluster`` and its generated sync twin ``Cluster``.

Routing state and decisions (which node is the primary, which nodes may serve
a read, what an error means for a node), WAL positions (LSNs) and write
tokens, the health probe query, the health runner's background work (a task
or a thread), the public ``is_read_only`` and ``create_cluster``.

Nodes are numbered in the order given to ``create_cluster``: node 0 is the
pool given as the primary, node ``i + 1`` the replica given at index ``i``.
Roles are what the health probes found, not that order: a promoted replica
becomes the primary, a demoted primary serves reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, overload

import psycopg
from psycopg.pq import DiagnosticField, ExecStatus
from psycopg.pq.abc import PGresult

from . import _impl
from ._exceptions import Error, PoolClosedError, PoolTimeoutError, QueryTimeoutError
from ._pool_common import SQLQuery, logger, not_a_query
from ._sever import sever

if TYPE_CHECKING:
    from ._cluster_async import AsyncCluster
    from ._cluster_sync import Cluster
    from ._pool_async import AsyncConnectionPool
    from ._pool_sync import ConnectionPool

__all__ = ["create_cluster", "is_read_only"]

# The primary's WAL position right after a write: the insert position is never
# below the end of the write's commit record, even with synchronous_commit=off.
WRITE_LSN_SQL = "SELECT pg_current_wal_insert_lsn()::text"
REPLAY_LSN_SQL = "SELECT pg_last_wal_replay_lsn()::text"
# The health probe, the same one round trip for every node, answered as text
# within probe_timeout(): in recovery; transaction_read_only (on for a standby,
# and for a primary fenced with default_transaction_read_only); its WAL
# position (replayed on a standby, written on a primary); the age of its last
# replayed commit; its WAL receiver's status (NULL: none; 'unknown': not
# visible to this role); and, when not in recovery, the timeline it writes on
# (the first 8 hex digits of its current WAL file name: exact, unlike the last
# checkpoint's timeline, which a freshly promoted server has not updated yet).
STATUS_SQL = b"""\
SELECT pg_is_in_recovery()::text,
       current_setting('transaction_read_only'),
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8::text,
       (SELECT coalesce(status, 'unknown') FROM pg_stat_wal_receiver),
       CASE WHEN NOT pg_is_in_recovery()
            THEN substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END"""
# For a server that refuses STATUS_SQL (a managed service without one of its
# functions): its role only. Standbys' lag is then unknown.
ROLE_SQL = b"""\
SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only'),
       NULL, NULL, NULL, NULL"""

# While a write waits for a primary, health rounds run at least this often.
HURRIED_INTERVAL = 0.1


def probe_timeout(health_check_interval: float) -> float:
    """How long a health probe (connect or query) may take before its node counts as down."""
    return min(max(2 * health_check_interval, 1.0), 5.0)


class ProbeRefused(psycopg.OperationalError):
    """The server answered the probe with an error of the query's own: it is up."""


def probe_row(results: Sequence[PGresult]) -> list[str | None]:
    """The first row of a probe's results as text; an error result raises
    (``ProbeRefused`` when the server is up but refused the query itself)."""
    res = results[-1] if results else None
    if res is not None and res.status == ExecStatus.FATAL_ERROR:
        sqlstate = (res.error_field(DiagnosticField.SQLSTATE) or b"").decode()
        if sqlstate and not sqlstate.startswith(("08", "57")):
            refusal = res.error_message.decode(errors="replace").strip()
            raise ProbeRefused(f"{refusal} (SQLSTATE {sqlstate})")
    if res is None or res.status != ExecStatus.TUPLES_OK or res.ntuples < 1:
        message = b"no result" if res is None else res.error_message or b"no row"
        raise psycopg.OperationalError(message.decode(errors="replace").strip())
    return [
        None if (value := res.get_value(0, col)) is None else value.decode()
        for col in range(res.nfields)
    ]


# Replica errors that say "only the primary can run this": a write (25006),
# something a standby does not support (0A000: reading an unlogged table,
# SERIALIZABLE), or a read that replay got in the way of (recovery conflicts:
# 40001, 40P01, and 55P03 when lock_timeout expired behind replay's locks).
# The replica wrote nothing, so the primary runs the statement again.
RERUN_ON_PRIMARY = frozenset({"25006", "0A000", "40001", "40P01", "55P03"})
# A write refused by a read-only server: nothing was written.
READ_ONLY_SQL_TRANSACTION = "25006"

# The read-your-writes position of each cluster in the current context (thread
# or task). One variable for all clusters, holding a mapping weakly keyed by
# cluster state: a disposed, unreferenced cluster leaves nothing behind. The
# mapping is never mutated once set, so contexts never share updates.
_TOKENS: ContextVar[weakref.WeakKeyDictionary[ClusterState, int] | None] = ContextVar(
    "pgfast_cluster_tokens", default=None
)

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(token: str) -> int:
    """A PostgreSQL LSN (``"16/B374D848"``) as an int; a malformed one is a ``ValueError``."""
    if not isinstance(token, str):
        raise TypeError(f"a write token is a str, not {type(token).__name__}")
    match = _LSN.fullmatch(token)
    if match is None:
        raise ValueError(
            f"invalid write token {token!r}: expected a WAL position such as '16/B374D848' "
            "(a value returned by cluster.write_token())"
        )
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """The PostgreSQL text form of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def is_read_only(q: SQLQuery) -> bool:
    """True when ``q`` provably cannot write or lock (so a replica may run it)."""
    if not isinstance(q, SQLQuery):
        not_a_query(q)
    return _impl.classify.is_read_only(q.format()[0])


class Failure(enum.Enum):
    """What an error raised by a node means for routing."""

    NODE_DOWN = "node down"  # take the node out, run the read elsewhere
    RERUN_ON_PRIMARY = "rerun on primary"  # the replica refused, the primary must run it
    QUERY_ERROR = "query error"  # the query's own fault: raise it


def classify_failure(exc: BaseException) -> Failure:
    """Whether ``exc`` from a node is the node's fault, a refused write, or the query's.

    The node is down only when it cannot be reached or used: no pool
    connection, a lost connection (psycopg reports no SQLSTATE), a
    connection exception (class 08), a server shutting down or refusing
    connections (57P01 to 57P05), or a ``query_timeout`` whose cancel the
    server never confirmed (the link was cut: the node stopped answering).
    Other server errors are the query's own, although psycopg makes classes
    53 to 58 ``OperationalError`` (out of memory, a program limit, a
    statement timeout...); ``RERUN_ON_PRIMARY`` ones send the statement to
    the primary.
    """
    if isinstance(exc, (PoolTimeoutError, PoolClosedError)):
        return Failure.NODE_DOWN
    if isinstance(exc, QueryTimeoutError):
        cause = exc.__cause__
        cut = isinstance(cause, psycopg.OperationalError) and cause.sqlstate is None
        return Failure.NODE_DOWN if cut else Failure.QUERY_ERROR
    if not isinstance(exc, psycopg.Error):
        return Failure.QUERY_ERROR
    sqlstate = exc.sqlstate
    if sqlstate is None:  # not from the server: a lost connection, or a client-side error
        lost = isinstance(exc, psycopg.OperationalError)
        return Failure.NODE_DOWN if lost else Failure.QUERY_ERROR
    if sqlstate in RERUN_ON_PRIMARY:
        return Failure.RERUN_ON_PRIMARY
    if sqlstate.startswith(("08", "57P")):
        return Failure.NODE_DOWN
    return Failure.QUERY_ERROR


def choose_primary(timelines: Mapping[int, int], current: int) -> int:
    """Of the writable nodes (each with the timeline it writes on), the one writes go to:
    the highest timeline (the most recently promoted), then ``current``, then the lowest
    node; -1 when none is writable."""
    return max(timelines, key=lambda j: (timelines[j], j == current, -j), default=-1)


class Kind(enum.Enum):
    """What a node's last health probe found it to be."""

    ASSUMED_PRIMARY = "assumed primary"  # the pool given as primary, until probed
    ASSUMED_REPLICA = "assumed replica"  # a pool given as replica, until probed
    WRITABLE = "writable"
    STANDBY = "standby"
    READ_ONLY = "read-only"  # not in recovery, yet refusing writes (a fenced primary)


_STANDBYS = (Kind.STANDBY, Kind.ASSUMED_REPLICA)


class ClusterState:
    """Routing state shared by every thread or task using one cluster.

    The selector balances reads over the nodes that answer; this class adds
    each node's role (what the health probes found), what they measured
    (replay position, lag), the connections of the reads in flight on each
    node (cut when it stops answering) and the read-your-writes position of
    the current context.
    """

    def __init__(
        self,
        replica_count: int,
        balance: str,
        max_replica_lag: float | None,
        read_your_writes: bool,
        fallback_to_primary: bool,
        names: Sequence[str] | None = None,
    ) -> None:
        nodes = replica_count + 1
        self.count = nodes
        self.names = (
            list(names)
            if names is not None
            else ["primary", *(f"replica {i}" for i in range(replica_count))]
        )
        self.selector = _impl.selector.Selector(nodes, balance)
        self.max_replica_lag = max_replica_lag
        self.read_your_writes = read_your_writes
        self.fallback_to_primary = fallback_to_primary
        # Until a first health round has measured lag, no replica is close enough;
        # without a fallback a read then waits for that round rather than failing.
        self.await_first_round = max_replica_lag is not None and not fallback_to_primary
        self.replay_lsn: list[int | None] = [None] * nodes
        self.lag: list[float | None] = [None] * nodes
        self.routed = [0] * nodes
        self.kind = [Kind.ASSUMED_PRIMARY, *[Kind.ASSUMED_REPLICA] * replica_count]
        self.timeline = [0] * nodes
        self.answers = ["not probed yet"] * nodes
        # The node writes go to (-1: none known writable), and the last one that was.
        self.writer = 0
        self.primary = 0
        everyone = (1 << nodes) - 1
        self._readers = everyone & ~1  # the nodes in recovery (or given as replicas)
        self._lag_ok = everyone if max_replica_lag is None else 0
        self._lock = threading.Lock()
        # (monotonic time, primary WAL position then): recent health rounds' samples.
        self._primary_positions: deque[tuple[float, int]] = deque(maxlen=16)
        # When each node was last known to hold all the primary had written.
        self._caught_up_at: list[float | None] = [None] * nodes
        # The psycopg connections (PGconn) of the reads in flight on each node.
        self._reads: list[set[Any]] = [set() for _ in range(nodes)]
        # Standbys that answered before any primary position was known (the
        # probes of a round run at once): their lag is measured when one is.
        self._unmeasured: dict[int, tuple[int | None, float | None, bool | None, float]] = {}

    def token(self) -> int:
        """This context's read-your-writes position for this cluster (0: none)."""
        tokens = _TOKENS.get()
        return 0 if tokens is None else tokens.get(self, 0)

    def _set_token(self, position: int) -> None:
        tokens = weakref.WeakKeyDictionary(_TOKENS.get() or ())
        if position:
            tokens[self] = position
        else:
            tokens.pop(self, None)
        _TOKENS.set(tokens)

    # -- read routing --------------------------------------------------------

    def eligible(self, exclude: int) -> int:
        """Bitmask of the nodes allowed to serve a read now (before up/down)."""
        mask = self._lag_ok & self._readers & ~exclude
        token = self.token()
        if token and mask:
            replay = self.replay_lsn
            for j in range(self.count):
                if mask >> j & 1 and (replay[j] or 0) < token:
                    mask &= ~(1 << j)
        return mask

    def candidates(self, exclude: int) -> int:
        """Bitmask of the replicas close enough (``max_replica_lag``), whatever the token."""
        return self._lag_ok & self._readers & ~exclude

    def reached_token(self, j: int) -> bool:
        return (self.replay_lsn[j] or 0) >= self.token()

    def no_replica(self) -> None:
        """Called when no replica can serve a read: raise unless the primary may."""
        if not self.fallback_to_primary and not self.token():
            raise Error(
                "no replica can serve this read (all are down or too far behind) and "
                "fallback_to_primary is False"
            )

    def fallback_reason(self, exclude: int) -> str:
        """Why a read goes to the primary (for tracing): ``"read_your_writes"`` when a
        close enough replica has not replayed this context's writes, ``"lag"`` when
        every replica answering is too far behind, else ``"fallback"`` (none answers)."""
        up = [
            j
            for j in range(self.count)
            if self._readers >> j & 1 and not exclude >> j & 1 and self.selector.is_up(j)
        ]
        close = [j for j in up if self._lag_ok >> j & 1]
        if close and self.token():
            return "read_your_writes"
        if up and not close:
            return "lag"
        return "fallback"

    def count_query(self, j: int) -> None:
        with self._lock:
            self.routed[j] += 1

    def track(self, j: int, pgconn: Any) -> bool:
        """Note a read running on node ``j`` over ``pgconn``; False when ``j`` is down.

        Whoever marks the node down afterwards cuts ``pgconn``; a caller told
        False (marked down before this call) abandons the read itself.
        """
        # Under the lock, like the cut in mark_down: a connection is never cut
        # once its read has untracked it (and it may serve someone else).
        with self._lock:
            self._reads[j].add(pgconn)
        return self.selector.is_up(j)

    def untrack(self, j: int, pgconn: Any) -> None:
        with self._lock:
            self._reads[j].discard(pgconn)

    # -- roles ---------------------------------------------------------------

    def _elect(self) -> int | None:
        """Choose the primary among the writable nodes that answer (holding the lock).

        The highest timeline wins (the most recently promoted node), then the
        current primary, then the lowest node. The given primary keeps the
        role until a probe has answered from it. Returns the previous writer
        when the choice changed, else None.
        """
        current = self.writer
        is_up = self.selector.is_up
        if current >= 0 and self.kind[current] is Kind.ASSUMED_PRIMARY and is_up(current):
            return None
        writable = {
            j: self.timeline[j]
            for j in range(self.count)
            if self.kind[j] is Kind.WRITABLE and is_up(j)
        }
        chosen = choose_primary(writable, self.primary)
        if chosen == current:
            return None
        self.writer = chosen
        if chosen >= 0 and chosen != self.primary:
            self.primary = chosen
            # Positions of another server (another timeline) say nothing of this one's.
            self._primary_positions.clear()
            self._caught_up_at = [None] * self.count
        return current

    def _writer_changed(self, previous: int) -> None:
        writer = self.writer
        if writer < 0:
            logger.warning("pgfast: no writable primary: %s", self.describe())
        else:
            was = "none" if previous < 0 else self.names[previous]
            logger.warning(
                "pgfast: %s is the primary now (%s; was: %s)",
                self.names[writer],
                self.answers[writer],
                was,
            )

    def role(self, j: int) -> str:
        """``"primary"``, ``"replica"`` or ``"down"``: what node ``j`` is used for now."""
        if not self.selector.is_up(j):
            return "down"
        if j == self.writer:
            return "primary"
        if self.kind[j] in _STANDBYS:
            return "replica"
        return "down"  # writable but not chosen (split brain), or read-only yet no standby

    def replica_nodes(self) -> list[int]:
        """The nodes serving reads: the given replicas that are standbys (a promoted one
        is not), then the given primary once it answered in recovery (demoted)."""
        given = [j for j in range(1, self.count) if self.kind[j] in _STANDBYS]
        return given + ([0] if self.kind[0] is Kind.STANDBY else [])

    def describe(self) -> str:
        """Each node and what it last answered (no password: names are pool displays)."""
        return "; ".join(f"{self.names[j]}: {self.answers[j]}" for j in range(self.count))

    # -- measurements --------------------------------------------------------

    def record_primary(self, position: str, at: float) -> None:
        """The primary's WAL position, asked for at monotonic time ``at``."""
        with self._lock:
            self._primary_positions.append((at, parse_lsn(position)))
            waiting, self._unmeasured = self._unmeasured, {}
        for j, sample in waiting.items():
            self._set_lag(j, self._replica_lag(j, *sample))

    def _set_lag(self, j: int, lag: float | None) -> None:
        with self._lock:
            self._set_lag_locked(j, lag)

    def _set_lag_locked(self, j: int, lag: float | None) -> None:
        self.lag[j] = lag
        limit = self.max_replica_lag
        if limit is not None:
            bit = 1 << j
            if lag is not None and lag <= limit:
                self._lag_ok |= bit
            else:
                self._lag_ok &= ~bit

    def record_status(
        self, j: int, row: Sequence[str | None], sent_at: float, now: float
    ) -> int | None:
        """Store what node ``j`` answered to ``STATUS_SQL`` (sent at ``sent_at``).

        Returns the previous writer when this answer changed which node is the
        primary, else None.
        """
        in_recovery, read_only, position, replay_age, receiver, timeline = row
        line = 0
        if in_recovery == "true":
            kind, answer = Kind.STANDBY, "standby (in recovery)"
        elif read_only == "on":
            kind = Kind.READ_ONLY
            answer = "not in recovery, yet read-only (default_transaction_read_only)"
        else:
            kind = Kind.WRITABLE
            with contextlib.suppress(TypeError, ValueError):
                line = int(timeline or "0", 16)
            answer = f"writable (timeline {line})"
        came_back = self.selector.mark_up(j)
        bit = 1 << j
        with self._lock:
            if kind is Kind.STANDBY and self.kind[j] is not kind:
                # A new standby (a demoted primary): its old positions mean nothing.
                self.replay_lsn[j] = None
                self._caught_up_at[j] = None
            self.kind[j] = kind
            self.timeline[j] = line
            self.answers[j] = answer
            if kind is Kind.STANDBY:
                self._readers |= bit
            else:
                self._readers &= ~bit
            previous = self._elect()
            is_writer = self.writer == j
        if came_back:
            logger.warning("pgfast: %s is back in rotation", self.names[j])
        if previous is not None:
            self._writer_changed(previous)
        if kind is Kind.WRITABLE:
            if is_writer and position is not None:
                self.record_primary(position, sent_at)
            self._set_lag(j, 0.0)  # nothing to wait for
        elif kind is Kind.STANDBY:
            self.note_replay(j, position)
            sample = (
                None if position is None else parse_lsn(position),
                None if replay_age is None else max(0.0, float(replay_age)),
                None if receiver == "unknown" else receiver == "streaming",
                now,
            )
            with self._lock:
                unknown = not self._primary_positions
                if unknown:
                    self._unmeasured[j] = sample
                    self._set_lag_locked(j, None)
            if not unknown:
                self._set_lag(j, self._replica_lag(j, *sample))
        else:
            self._set_lag(j, None)
        return previous

    def _replica_lag(
        self,
        j: int,
        replay: int | None,
        replay_age: float | None,
        receiving: bool | None,
        now: float,
    ) -> float | None:
        """Seconds of writes standby ``j`` may be missing (``None``: unknown).

        Measured against the primary's position, never the standby's own view
        alone: a standby whose WAL receiver stalled has replayed all it
        received and would look caught up. Lag is 0 when it has replayed the
        primary's latest sampled position (an idle primary sends nothing),
        else the smaller of two upper bounds of its staleness: the time since
        it was last seen caught up, and the age of its last replayed commit.
        """
        with self._lock:
            positions = list(self._primary_positions)
        if replay is None or not positions:
            return None
        for at, position in reversed(positions):
            if position <= replay:
                previous = self._caught_up_at[j]
                if previous is None or at > previous:
                    self._caught_up_at[j] = at
                break
        if receiving is False:
            return None  # its WAL stream is down: it falls behind at the next write
        if positions[-1][1] <= replay:
            return 0.0
        caught_up_at = self._caught_up_at[j]
        since = None if caught_up_at is None else now - caught_up_at
        bounds = [b for b in (replay_age, since) if b is not None]
        return min(bounds) if bounds else None

    def note_replay(self, j: int, replay: str | None) -> None:
        lsn = None if replay is None else parse_lsn(replay)
        with self._lock:
            current = self.replay_lsn[j]
            # Replay only moves forward; a stale concurrent answer must not rewind it.
            if lsn is not None and (current is None or lsn > current):
                self.replay_lsn[j] = lsn

    def mark_down(self, j: int, reason: str, cut_reads: bool = False) -> int | None:
        """Node ``j`` failed to connect or answer: out of rotation. With ``cut_reads``
        (its health probe failed: the node, not one connection), the reads in
        flight there are cut too, and run again elsewhere. Returns the previous
        writer when this changed which node is the primary, else None."""
        was_up = self.selector.mark_down(j)
        reason = " ".join(reason.split())  # libpq's messages span lines
        with self._lock:
            self.answers[j] = f"down ({reason})"
            previous = self._elect()
            if cut_reads:  # under the lock, like track(); sever() never blocks
                for pgconn in self._reads[j]:
                    sever(pgconn)
        if was_up:
            logger.warning("pgfast: %s left rotation: %s", self.names[j], reason)
        if previous is not None:
            self._writer_changed(previous)
        return previous

    # -- read-your-writes ----------------------------------------------------

    def wrote(self, lsn: str | None) -> None:
        """Remember the WAL position of a write done in the current context."""
        if lsn is not None:
            position = parse_lsn(lsn)
            if position > self.token():
                self._set_token(position)

    def write_token(self) -> str | None:
        """The current context's read-your-writes position, or ``None``."""
        token = self.token()
        return format_lsn(token) if token else None

    @contextlib.contextmanager
    def read_after(self, token: str | None) -> Iterator[None]:
        """Within the block, reads see at least the writes before ``token``."""
        position = 0 if token is None else parse_lsn(token)
        before = self.token()
        applied = max(position, before)
        self._set_token(applied)
        try:
            yield
        finally:
            # Only this cluster's position, and only when the block wrote nothing
            # to it: a write in the block must still be read back after it.
            if self.token() <= applied:
                self._set_token(before)

    def node_stats(self, j: int, pool_stats: dict[str, int]) -> dict[str, Any]:
        lsn = self.replay_lsn[j]
        return {
            **pool_stats,
            "role": self.role(j),
            "routed": self.routed[j],
            "up": self.selector.is_up(j),
            "in_flight": self.selector.in_flight(j),
            "lag": self.lag[j],
            "replay_lsn": None if lsn is None else format_lsn(lsn),
        }


# -- the health runner's background work: a task of an async cluster's event loop,
# a thread of a sync cluster's. AsyncHealthRunner (in _cluster_async) calls the
# ``_async`` ones; its generated twin HealthRunner the ``_sync`` ones.

AsyncWorker = asyncio.Task[None]
Worker = threading.Thread


def running_async(task: AsyncWorker | None) -> bool:
    """Whether ``task`` runs, in the running event loop."""
    return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()


def running_sync(thread: Worker | None) -> bool:
    """Whether ``thread`` was started: it runs until the runner stops."""
    return thread is not None


def start_async(body: Callable[[], Awaitable[None]]) -> AsyncWorker:
    """``body()`` as a task of the running event loop."""
    return asyncio.ensure_future(body(), loop=asyncio.get_running_loop())


def start_sync(body: Callable[[], None]) -> Worker:
    """``body()`` in a daemon thread (which never keeps the process alive)."""
    thread = threading.Thread(target=body, name="pgfast-cluster-health", daemon=True)
    thread.start()
    return thread


async def wait_async(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set, or ``timeout`` seconds."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def wait_sync(event: threading.Event, timeout: float) -> None:
    """Until ``event`` is set, or ``timeout`` seconds."""
    event.wait(timeout)


async def each_async(count: int, probe: Callable[[int], Awaitable[None]]) -> None:
    """Run ``probe(j)`` for j in ``range(count)`` concurrently."""
    await asyncio.gather(*(probe(j) for j in range(count)))


def each_sync(count: int, probe: Callable[[int], None]) -> None:
    """Run ``probe(j)`` for j in ``range(count)`` concurrently, in threads: one node
    that does not answer delays none of the others' verdicts."""
    threads = [
        threading.Thread(target=probe, args=(j,), name="pgfast-cluster-probe", daemon=True)
        for j in range(1, count)
    ]
    for thread in threads:
        thread.start()
    try:
        probe(0)
    finally:
        for thread in threads:
            thread.join()


async def stop_async(task: AsyncWorker | None, timeout: float) -> None:
    """Let ``task`` end, for ``timeout`` seconds at most, then cancel it."""
    if task is None or task.done():
        return
    try:
        same_loop = task.get_loop() is asyncio.get_running_loop()
    except RuntimeError:
        same_loop = False
    if same_loop:
        await asyncio.wait({task}, timeout=timeout)
    task.cancel()


def stop_sync(thread: Worker | None, timeout: float) -> None:
    """Let ``thread`` end, for ``timeout`` seconds at most: a daemon thread still busy
    after that closes its connections when it wakes up."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


# How reads are spread over the replicas (checked at run time too).
Balance = Literal["round_robin", "random", "least_busy"]


def _check_options(
    balance: str,
    max_replica_lag: float | None,
    health_check_interval: float,
    failover_timeout: float,
) -> None:
    strategies = _impl.selector.STRATEGIES
    if balance not in strategies:
        raise ValueError(
            f"balance must be one of {', '.join(map(repr, strategies))}, not {balance!r}"
        )
    for name, value, optional in (
        ("max_replica_lag", max_replica_lag, True),
        ("health_check_interval", health_check_interval, False),
        ("failover_timeout", failover_timeout, False),
    ):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")


@overload
def create_cluster(
    primary: ConnectionPool,
    replicas: Sequence[ConnectionPool],
    *,
    balance: Balance = ...,
    max_replica_lag: float | None = ...,
    read_your_writes: bool = ...,
    fallback_to_primary: bool = ...,
    health_check_interval: float = ...,
    failover_timeout: float = ...,
) -> Cluster: ...


@overload
def create_cluster(
    primary: AsyncConnectionPool,
    replicas: Sequence[AsyncConnectionPool],
    *,
    balance: Balance = ...,
    max_replica_lag: float | None = ...,
    read_your_writes: bool = ...,
    fallback_to_primary: bool = ...,
    health_check_interval: float = ...,
    failover_timeout: float = ...,
) -> AsyncCluster: ...


def create_cluster(
    primary: Any,
    replicas: Sequence[Any],
    *,
    balance: Balance = "round_robin",
    max_replica_lag: float | None = None,
    read_your_writes: bool = False,
    fallback_to_primary: bool = True,
    health_check_interval: float = 1.0,
    failover_timeout: float = 30.0,
) -> Cluster | AsyncCluster:
    """A primary/replica cluster: writes to the primary, reads spread over the replicas.

    All pools are sync (a ``Cluster``) or all async (an ``AsyncCluster``).
    Roles are checked by the health probes: when a replica is promoted, writes
    follow it (a write waits up to ``failover_timeout`` seconds for a primary).
    """
    from ._cluster_async import AsyncCluster
    from ._cluster_sync import Cluster
    from ._pool_async import AsyncConnectionPool
    from ._pool_sync import ConnectionPool

    if isinstance(replicas, (str, bytes, ConnectionPool, AsyncConnectionPool)) or not isinstance(
        replicas, Sequence
    ):
        raise TypeError(f"replicas must be a list of pools, not {type(replicas).__name__}")
    if not replicas:
        raise ValueError("a cluster needs at least one replica (replicas is empty)")
    most = _impl.selector.MAX_NODES - 1  # one node is the primary
    if len(replicas) > most:
        raise ValueError(f"a cluster takes at most {most} replicas, got {len(replicas)}")
    _check_options(balance, max_replica_lag, health_check_interval, failover_timeout)
    pools = [primary, *replicas]
    cls: type[Cluster] | type[AsyncCluster]
    if all(isinstance(p, ConnectionPool) for p in pools):
        cls = Cluster
    elif all(isinstance(p, AsyncConnectionPool) for p in pools):
        cls = AsyncCluster
    else:
        kinds = ", ".join(type(p).__name__ for p in pools)
        raise TypeError(
            "a cluster's pools must be all sync (create_pool) or all async "
            f"(create_async_pool), got: {kinds}"
        )
    names = [f"primary {primary._config.display!r}"] + [
        f"replica {i} {pool._config.display!r}" for i, pool in enumerate(replicas)
    ]
    state = ClusterState(
        len(replicas),
        balance,
        max_replica_lag,
        bool(read_your_writes),
        bool(fallback_to_primary),
        names,
    )
    return cls(pools, state, float(health_check_interval), float(failover_timeout))
