"""Automatic pipelining: single statements from concurrent tasks share an async pool's connections.

A *lane* is a pool connection checked out in libpq's pipeline mode. Each
query is written on it with its own Sync, behind the queries already in
flight, and an event-loop reader hands each answer to its caller in order.
A lane goes back to the pool as soon as it has nothing in flight.

What a lane never does: run a statement twice (a dead link fails every
caller on it), or send a cancel request that could stop another caller's
statement (only a statement with nothing behind it on the wire is
cancelled; see ``Lane.expire``).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq
from psycopg._preparing import Prepare
from psycopg._queries import PostgresRawQuery
from psycopg.adapt import Transformer

from . import _impl
from ._deadline import CONFIRM_WITHIN, Deadline
from ._deadline import arm as arm_deadline
from ._deadline import disarm as disarm_deadline
from ._exceptions import QueryTimeoutError
from ._execute_async import _fresh
from ._pool_common import logger
from ._sever import sever

if TYPE_CHECKING:
    from ._connection_async import _PgConnection
    from ._pool_async import AsyncConnectionPool

# The most statements in flight on one connection: past it, callers wait
# for a slot (in arrival order) rather than queue behind slow statements.
MAX_DEPTH = 64
# The most statements written on one lane in one event-loop turn: quick
# statements ready together go out together on one connection (the server
# process reads them in one wake-up), up to this many, before another lane
# is used.
TURN_BATCH = 16
# A statement text whose recent runs answered within this long (seconds,
# a moving average) is quick: it may join a batch of quick ones. Any other
# statement, and a text not seen yet, is never written behind others in its
# turn while a connection is free, so that it delays nobody.
QUICK = 0.002
UNSEEN = float("inf")
# A drained lane stays in pipeline mode this long (seconds), watched by its
# reader, for the next statements: the common case of a busy service, where
# leaving and re-entering would cost more than the statement itself.
PARK_FOR = 0.5
# First words of statements that change the session or need the whole
# connection: they run on a connection held exclusively, never pipelined.
EXCLUSIVE_WORDS = frozenset(
    {
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
        "SET",
        "RESET",
        "LISTEN",
        "UNLISTEN",
        "DECLARE",
        "CLOSE",
        "FETCH",
        "MOVE",
        "COPY",
        "LOCK",
        "DISCARD",
        "DEALLOCATE",
        "EXECUTE",
    }
)

TUPLES_OK = pq.ExecStatus.TUPLES_OK
BAD = pq.ConnStatus.BAD
IDLE = pq.TransactionStatus.IDLE


class Route:
    """What a pool knows of one statement text: whether it may be pipelined,
    and how long its recent runs took to answer."""

    __slots__ = ("pipelined", "seconds")

    def __init__(self, pipelined: bool) -> None:
        self.pipelined = pipelined
        self.seconds = UNSEEN

    @property
    def quick(self) -> bool:
        return self.seconds < QUICK


def first_word(text: str) -> str:
    """The statement's first keyword, upper-cased ('' for an empty text)."""
    stripped = text.lstrip(" \t\r\n(")
    end = 0
    while end < len(stripped) and stripped[end].isalpha():
        end += 1
    return stripped[:end].upper()


class Entry:
    """One statement in flight on a lane, and its caller's future."""

    __slots__ = (
        "abandoned",
        "deadline",
        "dicts",
        "error",
        "fetch",
        "future",
        "key",
        "name",
        "prep",
        "quick",
        "result",
        "route",
        "sent_at",
        "snapshot",
        "timed_out",
        "timer",
        "waiter",
    )

    def __init__(self, future: asyncio.Future[Any] | None, fetch: bool, dicts: bool) -> None:
        self.future = future
        self.fetch = fetch
        self.dicts = dicts
        self.abandoned = future is None  # nobody waits (housekeeping, or a cancelled caller)
        # The statement's text, when its answer time is learned; whether it
        # was quick when written; when it was written (loop time).
        self.route: Route | None = None
        self.quick = True
        self.sent_at = 0.0
        self.result: Any = None
        self.error: Any = None
        self.prep: Prepare = Prepare.NO
        self.key: Any = None
        self.name = b""
        # The cancel request sent for this statement (query_timeout or a
        # cancelled caller), and whether its deadline passed.
        self.deadline: Deadline | None = None
        self.timed_out = False
        self.timer: asyncio.TimerHandle | None = None
        # The deadline's state when the statement ended (see AsyncConnectionPool._outcome).
        self.snapshot: Deadline | None = None
        # Set when the statement ended, for a cancelled caller waiting for it.
        self.waiter: asyncio.Future[None] | None = None


class Lane:
    """A connection in pipeline mode with the statements in flight on it, oldest first."""

    def __init__(
        self, pool: AsyncConnectionPool, conn: _PgConnection, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.pool = pool
        self.conn = conn
        self.loop = loop
        pgconn = conn.pgconn
        self.pgconn = pgconn
        self.fd = pgconn.socket
        self.encoding = conn._pgfast_encoding
        tx = conn._pgfast_tx
        if tx is None:
            tx = conn._pgfast_tx = Transformer(conn)
        self.tx = tx
        self.entries: deque[Entry] = deque()
        self.accepting = True
        self.dead = False
        self.released = False
        # Drained and kept for the next statements (see PARK_FOR).
        self.parked = False
        self.idle_since = 0.0
        self.park_timer: asyncio.TimerHandle | None = None
        # The connection, when it needs the pool's slow release (checks, a
        # cancel request in flight, max_uses): claimed by a caller of the lane.
        self.pending_release: _PgConnection | None = None
        self.writing = False
        self.unwatched = False
        self.reads = 0  # statements answered: progress, for the stall check
        # Statement names whose preparation failed here: a later statement
        # sent under that name meets "does not exist" (26000), which then
        # says nothing about a pooler.
        self.failed_prepares: set[bytes] = set()
        # Statements written in this event-loop turn: the turn's next quick
        # ones join them, while no statement in flight here is a slow one.
        self.turn_writes = 0
        self.slow = 0
        self.last_answer = 0.0  # loop time of the last statement answered here
        pgconn.enter_pipeline_mode()
        loop.add_reader(self.fd, self.readable)
        # libpq (before 17) flushes each Sync: on Linux TCP the lane corks its
        # socket from the turn's second statement on, so that the batch
        # leaves in one segment, waking the server once, when the turn ends.
        self.corker = _corker(self.fd)
        self.corked = False

    @property
    def depth(self) -> int:
        return len(self.entries)

    def takes_quick(self) -> bool:
        """Whether a quick statement may join what was written here in this turn: a
        batch not full, with nothing slow in flight to wait behind."""
        return (
            0 < self.turn_writes < TURN_BATCH
            and not self.slow
            and len(self.entries) < MAX_DEPTH
            and self.accepting
        )

    # -- sending -------------------------------------------------------------

    def send(
        self,
        text: str,
        params: list[Any],
        fetch: bool,
        dicts: bool,
        prepare: bool | None,
        route: Route,
    ) -> Entry:
        """Write one statement and its Sync; the caller awaits ``entry.future``.

        Parameters are dumped first: a parameter that cannot be adapted
        raises here, with nothing sent. Statements are prepared after the
        connection's threshold (never when ``prepare`` is False), under the
        client-unique names of its prepare manager.
        """
        pgq = PostgresRawQuery(self.tx)
        pgq.convert(text, params or None)
        entry = Entry(self.loop.create_future(), fetch, dicts)
        entry.route = route
        entry.quick = route.quick
        entry.sent_at = self.loop.time()
        self._write(entry, pgq, prepare)
        return entry

    def _write(self, entry: Entry, pgq: PostgresRawQuery, prepare: bool | None) -> None:
        self.parked = False
        manager = self.conn._prepared
        pgconn = self.pgconn
        if not self.turn_writes:
            self.loop.call_soon(self._end_turn)
        elif not self.corked and self.corker is not None:
            self.corked = _cork(self.corker, True)
        self.turn_writes += 1
        try:
            if manager._to_flush:
                self._flush_deallocations()
            prep, name = manager.get(pgq, prepare)
            if prep is Prepare.NO:
                pgconn.send_query_params(pgq.query, pgq.params, pgq.types, pgq.formats)
            else:
                if prep is Prepare.SHOULD:
                    pgconn.send_prepare(name, pgq.query, pgq.types)
                pgconn.send_query_prepared(name, pgq.params, pgq.formats)
            entry.prep, entry.name = prep, name
            entry.key = manager.maybe_add_to_cache(pgq, prep, name)
            pgconn.pipeline_sync()
        except psycopg.Error as exc:
            # A half-written statement leaves the lane unusable.
            self.die(exc)
            raise
        if not entry.quick:
            self.slow += 1
        self.entries.append(entry)
        self._flush()

    def _end_turn(self) -> None:
        """The event-loop turn is over: what the lane corked leaves now."""
        self.turn_writes = 0
        if self.corked and self.corker is not None:
            self.corked = False
            _cork(self.corker, False)  # (were it to fail, the kernel lets it out within 200 ms)

    def _flush_deallocations(self) -> None:
        """Deallocate what the prepare manager evicted (or everything, after a DROP/ROLLBACK)."""
        to_flush = self.conn._prepared._to_flush
        while to_flush:
            name = to_flush.popleft()
            command = b"DEALLOCATE ALL" if name is None else b"DEALLOCATE " + name
            self.pgconn.send_query_params(command, None)
            self.pgconn.pipeline_sync()
            self.entries.append(Entry(None, False, False))

    def _flush(self) -> None:
        if self.writing:
            return
        try:
            pending = self.pgconn.flush()
        except psycopg.Error as exc:
            self.die(exc)
            return
        if pending:
            self.writing = True
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            pending = self.pgconn.flush()
        except psycopg.Error as exc:
            self.die(exc)
            return
        if not pending:
            self.writing = False
            self.loop.remove_writer(self.fd)

    # -- receiving -----------------------------------------------------------

    def readable(self) -> None:
        """Read what arrived and hand each finished statement to its caller."""
        pgconn = self.pgconn
        entries = self.entries
        try:
            pgconn.consume_input()
            _impl.engine.read_results(pgconn, entries, self._finish)
            if pgconn.status == BAD:
                raise psycopg.OperationalError(
                    "the connection to the server was lost: "
                    + pgconn.get_error_message(self.encoding)
                )
            while (notify := pgconn.notifies()) is not None:
                handler = pgconn.notify_handler
                if handler is not None:
                    handler(notify)
        except psycopg.Error as exc:
            self.die(exc)
            return
        if not entries:
            self.drained()

    def _finish(self, entry: Entry) -> None:
        """``entry``'s Sync arrived: its caller gets its rows, count or error."""
        self.reads += 1
        route = entry.route
        if route is not None:
            # Its own time: from when it was written, or from the answer
            # before it on this lane if that came later (it waited behind).
            now = self.loop.time()
            took = now - max(entry.sent_at, self.last_answer)
            self.last_answer = now
            seconds = route.seconds
            route.seconds = took if seconds == UNSEEN else seconds + (took - seconds) / 4
        if not entry.quick:
            self.slow -= 1
        manager = self.conn._prepared
        deadline = _settle(entry)
        if deadline is not None:
            self.conn._pgfast_cancel = deadline  # checked when the lane is released
        if entry.key is not None:
            got = [r for r in (entry.error, entry.result) if r is not None]
            manager.validate(entry.key, entry.prep, entry.name, got)
        if entry.error is not None and entry.prep is Prepare.SHOULD:
            self.failed_prepares.add(entry.name)
        if self.pool._slot_waiters and self.accepting:
            self.pool._wake_lane_waiter()
        future = entry.future
        if entry.abandoned or future is None or future.done():
            return
        if entry.error is not None:
            future.set_exception(
                psycopg.errors.error_from_result(entry.error, encoding=self.encoding)
            )
            return
        res = entry.result
        try:
            if not entry.fetch:
                value: Any = 0 if res is None else (res.command_tuples or 0)
            elif res is None or res.status != TUPLES_OK:
                value = []
            else:
                value = _impl.engine.load_rows(self.tx, res, entry.dicts, self.encoding)
        except Exception as exc:  # a value no loader could read
            future.set_exception(exc)
            return
        future.set_result(value)

    def die(self, exc: BaseException) -> None:
        """The link is gone: every caller in flight gets a connection error; none is re-run."""
        if self.dead:
            return
        self.dead = True
        self.accepting = False
        entries, self.entries = list(self.entries), deque()
        self._unwatch()
        if not any(entry.future is not None and not entry.abandoned for entry in entries):
            self.pool._report(exc)  # no caller gets it: the error hook does
        for entry in entries:
            _settle(entry)
            future = entry.future
            if entry.abandoned or future is None or future.done():
                continue
            if entry.error is not None:
                # The server's own word on it (AdminShutdown, ...) came first.
                error = psycopg.errors.error_from_result(entry.error, encoding=self.encoding)
                future.set_exception(error)
                continue
            error = exc if isinstance(exc, psycopg.Error) else psycopg.OperationalError(str(exc))
            future.set_exception(_fresh(error))
        if self.pgconn.status != BAD:
            self.pgconn.finish()  # broken: the pool discards it on release
        self.retire()

    # -- deadlines and cancellation ------------------------------------------

    def arm(self, entry: Entry, seconds: float) -> None:
        entry.timer = self.loop.call_later(seconds, self.expire, entry)

    def expire(self, entry: Entry) -> None:
        """``entry`` passed its query_timeout."""
        entry.timer = None
        if entry.future is None or entry.future.done() or entry not in self.entries:
            return
        entry.timed_out = True
        if not self._cancel_alone(entry):
            # Other callers' statements sit behind it: a cancel request could
            # stop one of them. The caller gets its timeout now; the result
            # is read and dropped. A link that answers nothing more within
            # the confirmation period is stalled: cut it.
            entry.abandoned = True
            entry.future.set_exception(
                QueryTimeoutError(
                    f"the statement did not answer within {self.pool._query_timeout:g} s "
                    "(query_timeout); its result will be discarded"
                )
            )
            reads = self.reads
            self.loop.call_later(CONFIRM_WITHIN, self._stalled, reads)

    def abandon(self, entry: Entry) -> asyncio.Future[None] | None:
        """The caller was cancelled: its result is dropped when it comes.

        When its statement is alone on the lane, it is also cancelled on the
        server; the returned future is then done once the statement ended
        (moments later), so that the caller can give the connection back
        as it would after a cancelled statement on a held connection.
        """
        entry.abandoned = True
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry in self.entries and self._cancel_alone(entry):
            entry.waiter = self.loop.create_future()
            return entry.waiter
        return None

    def _unwatch(self) -> None:
        corker, self.corker = self.corker, None
        if corker is not None:
            if self.corked:
                self.corked = False
                _cork(corker, False)  # before anyone else writes on the connection
            # The duplicate would keep the TCP connection open after libpq closed it.
            corker.close()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        if not self.unwatched:
            self.unwatched = True
            self.loop.remove_reader(self.fd)

    def _cancel_alone(self, entry: Entry) -> bool:
        """Send a cancel request for ``entry`` when it is the only statement on the lane.

        No statement is sent after it until it ended, and the lane goes back
        to the pool, which closes the connection when the request may still
        be on its way (see ``AsyncConnectionPool._release``).
        """
        if self.dead or len(self.entries) != 1 or self.entries[0] is not entry:
            return False
        if entry.deadline is None:
            self.accepting = False
            entry.deadline = arm_deadline(self.pgconn, 0.0)
        return True

    def _stalled(self, reads: int) -> None:
        if not self.dead and self.entries and self.reads == reads:
            logger.warning(
                "pgfast: a pipelined connection answered nothing within %g s after a "
                "query_timeout: closing it",
                CONFIRM_WITHIN,
            )
            sever(self.pgconn)

    # -- end of life -----------------------------------------------------------

    def drained(self) -> None:
        """Nothing in flight: stay ready for the next statement (parked), or retire."""
        if self.pgconn.transaction_status != IDLE:
            # A statement left a transaction open (libpq tells only once
            # nothing is in flight): the pool rolls it back.
            self.accepting = False
        if self.accepting and not self.dead and self.pool._may_park(self):
            self.parked = True
            self.idle_since = self.loop.time()
            if self.park_timer is None:
                self.park_timer = self.loop.call_later(PARK_FOR, self._park_check)
        else:
            self.retire()

    def _park_check(self) -> None:
        self.park_timer = None
        if self.released:
            return
        if self.parked:
            idle = self.loop.time() - self.idle_since
            if idle >= PARK_FOR:
                self.retire()
                return
            delay = PARK_FOR - idle
        else:
            delay = PARK_FOR
        self.park_timer = self.loop.call_later(delay, self._park_check)

    def retire(self) -> None:
        """Nothing in flight: leave pipeline mode and give the connection back."""
        if self.released:
            return
        self.parked = False
        if self.park_timer is not None:
            self.park_timer.cancel()
            self.park_timer = None
        self.released = True
        self.accepting = False
        self.pool._lane_gone(self)
        self._unwatch()
        if not self.dead:
            try:
                self.pgconn.exit_pipeline_mode()
            except psycopg.Error as exc:
                logger.debug("pgfast: leaving pipeline mode failed: %s", exc)
                self.pgconn.finish()
        self.pending_release = self.pool._return_lane_conn(self, self.conn)


def _corker(fd: int) -> socket.socket | None:
    """A duplicate of a TCP connection's socket, to cork it with; None where
    corking is not available (not Linux, a Unix-domain socket)."""
    if not hasattr(socket, "TCP_CORK"):
        return None
    try:
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    if not _cork(sock, False):
        sock.close()
        return None
    return sock


def _cork(sock: socket.socket, on: bool) -> bool:
    """Hold back (``on``) or let out the socket's writes; False when that failed."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)
    except OSError:
        return False
    return True


def _settle(entry: Entry) -> Deadline | None:
    """``entry``'s statement has ended (answered, or its link died): wake whoever
    waits for that, stop its timer and its deadline; the deadline, if any."""
    waiter = entry.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
    if entry.timer is not None:
        entry.timer.cancel()
    deadline = entry.deadline
    if deadline is not None:
        entry.snapshot = deadline.snapshot()
        disarm_deadline(deadline)
    return deadline
