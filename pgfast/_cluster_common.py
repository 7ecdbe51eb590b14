"""Pieces shared by ``AsyncCluster`` and its generated sync twin ``Cluster``.

Routing state and decisions (which replicas may serve a read, what an error
means for a node), WAL positions (LSNs) and write tokens, the replica status
query, the background health runners, the public ``is_read_only`` and
``create_cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, overload

import psycopg
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGresult

from . import _impl
from ._exceptions import Error, PoolClosedError, PoolTimeoutError
from ._pool_common import SQLQuery, logger, not_a_query

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
# Health probes. Each is one round trip, answered as text, within probe_timeout():
# the primary's WAL position, then each replica's state: in recovery, replay
# position, age of its last replayed commit, WAL receiver status (NULL: no
# receiver; 'unknown': not visible to this role).
PRIMARY_LSN_SQL = b"SELECT pg_current_wal_lsn()::text"
STATUS_SQL = b"""\
SELECT pg_is_in_recovery()::text,
       pg_last_wal_replay_lsn()::text,
       EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8::text,
       (SELECT coalesce(status, 'unknown') FROM pg_stat_wal_receiver)"""


def probe_timeout(health_check_interval: float) -> float:
    """How long a health probe (connect or query) may take before its node counts as down."""
    return min(max(2 * health_check_interval, 1.0), 5.0)


def probe_row(results: Sequence[PGresult]) -> list[str | None]:
    """The first row of a probe's results as text; an error result raises."""
    res = results[-1] if results else None
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
    return bool(_impl.classify.is_read_only(q.format()[0]))


class Failure(enum.Enum):
    """What an error raised by a replica means for routing."""

    NODE_DOWN = "node down"  # take the replica out, run the read elsewhere
    RERUN_ON_PRIMARY = "rerun on primary"  # the replica refused, the primary must run it
    QUERY_ERROR = "query error"  # the query's own fault: raise it


def classify_failure(exc: BaseException) -> Failure:
    """Whether ``exc`` from a replica is the node's fault, a refused write, or the query's.

    The node is down only when it cannot be reached or used: no pool
    connection, a lost connection (psycopg reports no SQLSTATE), a
    connection exception (class 08) or a server shutting down or refusing
    connections (57P01 to 57P05). Other server errors are the query's own,
    although psycopg makes classes 53 to 58 ``OperationalError`` (out of
    memory, a program limit, a statement timeout...); ``RERUN_ON_PRIMARY``
    ones send the statement to the primary.
    """
    if isinstance(exc, (PoolTimeoutError, PoolClosedError)):
        return Failure.NODE_DOWN
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


class ClusterState:
    """Routing state shared by every thread or task using one cluster.

    The selector tracks which replicas are up and balances reads among them;
    this class adds what the health loop measured (replay position, lag) and
    the read-your-writes position of the current context.
    """

    def __init__(
        self,
        replica_count: int,
        balance: str,
        max_replica_lag: float | None,
        read_your_writes: bool,
        fallback_to_primary: bool,
    ) -> None:
        self.selector = _impl.selector.Selector(replica_count, balance)
        self.count = replica_count
        self.max_replica_lag = max_replica_lag
        self.read_your_writes = read_your_writes
        self.fallback_to_primary = fallback_to_primary
        # Until a first health round has measured lag, no replica is close enough;
        # without a fallback a read then waits for that round rather than failing.
        self.await_first_round = max_replica_lag is not None and not fallback_to_primary
        self.replay_lsn: list[int | None] = [None] * replica_count
        self.lag: list[float | None] = [None] * replica_count
        self.primary_queries = 0
        self.replica_queries = [0] * replica_count
        self._lag_ok = (1 << replica_count) - 1 if max_replica_lag is None else 0
        self._lock = threading.Lock()
        # (monotonic time, primary WAL position then): recent health rounds' samples.
        self._primary_positions: deque[tuple[float, int]] = deque(maxlen=16)
        # When each replica was last known to hold all the primary had written.
        self._caught_up_at: list[float | None] = [None] * replica_count

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
        """Bitmask of the replicas allowed to serve a read now (before up/down)."""
        mask = self._lag_ok & ~exclude
        token = self.token()
        if token and mask:
            replay = self.replay_lsn
            for i in range(self.count):
                if mask >> i & 1 and (replay[i] or 0) < token:
                    mask &= ~(1 << i)
        return mask

    def candidates(self, exclude: int) -> int:
        """Bitmask of the replicas close enough (``max_replica_lag``), whatever the token."""
        return self._lag_ok & ~exclude

    def reached_token(self, i: int) -> bool:
        return (self.replay_lsn[i] or 0) >= self.token()

    def no_replica(self) -> None:
        """Called when no replica can serve a read: raise unless the primary may."""
        if not self.fallback_to_primary and not self.token():
            raise Error(
                "no replica can serve this read (all are down or too far behind) and "
                "fallback_to_primary is False"
            )

    def count_query(self, replica: int | None) -> None:
        with self._lock:
            if replica is None:
                self.primary_queries += 1
            else:
                self.replica_queries[replica] += 1

    # -- measurements --------------------------------------------------------

    def record_primary(self, position: str, at: float) -> None:
        """The primary's WAL position, asked for at monotonic time ``at``."""
        with self._lock:
            self._primary_positions.append((at, parse_lsn(position)))

    def record_status(self, i: int, row: Sequence[str | None], now: float) -> None:
        """Store what the health loop read on replica ``i`` (a ``STATUS_SQL`` row)."""
        in_recovery, replay, replay_age, receiver = row
        self.note_replay(i, replay)
        if in_recovery != "true":
            lag: float | None = 0.0  # promoted: nothing to wait for
        else:
            lag = self._replica_lag(
                i,
                None if replay is None else parse_lsn(replay),
                None if replay_age is None else max(0.0, float(replay_age)),
                None if receiver == "unknown" else receiver == "streaming",
                now,
            )
        self.lag[i] = lag
        limit = self.max_replica_lag
        if limit is not None:
            bit = 1 << i
            with self._lock:
                if lag is not None and lag <= limit:
                    self._lag_ok |= bit
                else:
                    self._lag_ok &= ~bit

    def _replica_lag(
        self,
        i: int,
        replay: int | None,
        replay_age: float | None,
        receiving: bool | None,
        now: float,
    ) -> float | None:
        """Seconds of writes replica ``i`` may be missing (``None``: unknown).

        Measured against the primary's position, never the replica's own view
        alone: a replica whose WAL receiver stalled has replayed all it
        received and would look caught up. Lag is 0 when the replica has
        replayed the primary's latest sampled position (an idle primary sends
        nothing), else the smaller of two upper bounds of its staleness: the
        time since it was last seen caught up, and the age of its last
        replayed commit.
        """
        with self._lock:
            positions = list(self._primary_positions)
        if replay is None or not positions:
            return None
        for at, position in reversed(positions):
            if position <= replay:
                previous = self._caught_up_at[i]
                if previous is None or at > previous:
                    self._caught_up_at[i] = at
                break
        if receiving is False:
            return None  # its WAL stream is down: it falls behind at the next write
        if positions[-1][1] <= replay:
            return 0.0
        caught_up_at = self._caught_up_at[i]
        since = None if caught_up_at is None else now - caught_up_at
        bounds = [b for b in (replay_age, since) if b is not None]
        return min(bounds) if bounds else None

    def note_replay(self, i: int, replay: str | None) -> None:
        lsn = None if replay is None else parse_lsn(replay)
        with self._lock:
            current = self.replay_lsn[i]
            # Replay only moves forward; a stale concurrent answer must not rewind it.
            if lsn is not None and (current is None or lsn > current):
                self.replay_lsn[i] = lsn

    def mark_down(self, i: int, reason: str) -> None:
        if self.selector.mark_down(i):
            logger.warning("pgfast: replica %d left rotation: %s", i, reason)

    def mark_up(self, i: int) -> None:
        if self.selector.mark_up(i):
            logger.warning("pgfast: replica %d is back in rotation", i)

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

    def node_stats(self, replica: int | None, pool_stats: dict[str, int]) -> dict[str, Any]:
        if replica is None:
            return {**pool_stats, "routed": self.primary_queries}
        lsn = self.replay_lsn[replica]
        return {
            **pool_stats,
            "routed": self.replica_queries[replica],
            "up": self.selector.is_up(replica),
            "in_flight": self.selector.in_flight(replica),
            "lag": self.lag[replica],
            "replay_lsn": None if lsn is None else format_lsn(lsn),
        }


class AsyncHealthRunner:
    """Runs a cluster's health loop as an asyncio task of the loop using the cluster."""

    def __init__(
        self,
        body: Callable[[AsyncHealthRunner], Coroutine[Any, Any, None]],
        stop_timeout: float,
    ) -> None:
        self._body = body
        self._stop_timeout = stop_timeout
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._measured = asyncio.Event()  # set once a first round has completed

    def ensure_started(self) -> None:
        """Start the loop in the running event loop, unless it already runs there."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        # Events are bound to the loop that first waits on them: new ones per loop.
        measured = self.measured
        self._stop = asyncio.Event()
        self._measured = asyncio.Event()
        if measured:
            self._measured.set()
        self._task = asyncio.get_running_loop().create_task(self._body(self))

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True when the loop must stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    @property
    def measured(self) -> bool:
        """Whether a first round has completed."""
        return self._measured.is_set()

    def round_done(self) -> None:
        """Called by the loop after each round."""
        self._measured.set()

    async def wait_measured(self) -> None:
        """Wait for the first round to complete (at most the time a round may take)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._measured.wait(), self._stop_timeout)

    @staticmethod
    async def each(count: int, probe: Callable[[int], Awaitable[None]]) -> None:
        """Run ``probe(i)`` for i in ``range(count)`` concurrently."""
        await asyncio.gather(*(probe(i) for i in range(count)))

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        try:
            same_loop = task.get_loop() is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        if same_loop:
            # Probes are bounded, so the loop ends within a round; never wait longer.
            await asyncio.wait({task}, timeout=self._stop_timeout)
        task.cancel()


class HealthRunner:
    """Runs a cluster's health loop in a daemon thread (never keeps the process alive)."""

    def __init__(self, body: Callable[[HealthRunner], None], stop_timeout: float) -> None:
        self._body = body
        self._stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._measured = threading.Event()  # set once a first round has completed

    def ensure_started(self) -> None:
        """Start the thread once."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._body, args=(self,), name="pgfast-cluster-health", daemon=True
                )
                self._thread.start()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True when the loop must stop."""
        return self._stop.wait(seconds)

    @property
    def measured(self) -> bool:
        """Whether a first round has completed."""
        return self._measured.is_set()

    def round_done(self) -> None:
        """Called by the loop after each round."""
        self._measured.set()

    def wait_measured(self) -> None:
        """Wait for the first round to complete (at most the time a round may take)."""
        self._measured.wait(self._stop_timeout)

    @staticmethod
    def each(count: int, probe: Callable[[int], None]) -> None:
        """Run ``probe(i)`` for i in ``range(count)``, one after the other (each is bounded)."""
        for i in range(count):
            probe(i)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Probes are bounded, so the loop ends within a round; a daemon thread
            # still busy after that closes its connections when it wakes up.
            thread.join(self._stop_timeout)


def _check_options(
    balance: str, max_replica_lag: float | None, health_check_interval: float
) -> None:
    strategies = _impl.selector.STRATEGIES
    if balance not in strategies:
        raise ValueError(
            f"balance must be one of {', '.join(map(repr, strategies))}, not {balance!r}"
        )
    for name, value, optional in (
        ("max_replica_lag", max_replica_lag, True),
        ("health_check_interval", health_check_interval, False),
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
    balance: str = ...,
    max_replica_lag: float | None = ...,
    read_your_writes: bool = ...,
    fallback_to_primary: bool = ...,
    health_check_interval: float = ...,
) -> Cluster: ...


@overload
def create_cluster(
    primary: AsyncConnectionPool,
    replicas: Sequence[AsyncConnectionPool],
    *,
    balance: str = ...,
    max_replica_lag: float | None = ...,
    read_your_writes: bool = ...,
    fallback_to_primary: bool = ...,
    health_check_interval: float = ...,
) -> AsyncCluster: ...


def create_cluster(
    primary: Any,
    replicas: Sequence[Any],
    *,
    balance: str = "round_robin",
    max_replica_lag: float | None = None,
    read_your_writes: bool = False,
    fallback_to_primary: bool = True,
    health_check_interval: float = 1.0,
) -> Cluster | AsyncCluster:
    """A primary/replica cluster: writes to ``primary``, reads spread over ``replicas``.

    All pools are sync (a ``Cluster``) or all async (an ``AsyncCluster``).
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
    if len(replicas) > _impl.selector.MAX_NODES:
        raise ValueError(
            f"a cluster takes at most {_impl.selector.MAX_NODES} replicas, got {len(replicas)}"
        )
    _check_options(balance, max_replica_lag, health_check_interval)
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
    state = ClusterState(
        len(replicas), balance, max_replica_lag, bool(read_your_writes), bool(fallback_to_primary)
    )
    return cls(primary, list(replicas), state, float(health_check_interval))
