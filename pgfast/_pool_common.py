"""Pieces shared by the async pool and its generated sync twin (no I/O here)."""

from __future__ import annotations

import enum
import logging
import random
import secrets
import select
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeAlias, TypedDict

import psycopg
from psycopg._preparing import Prepare, PrepareManager
from psycopg._queries import PostgresQuery
from psycopg.adapt import AdaptersMap
from psycopg.types.json import JsonbDumper

from . import _impl
from ._config import check_seconds, millis
from ._exceptions import Error
from ._sql import SQLQuery as SQLQuery  # re-exported for the pool and cluster modules

# Imported at run time too, so that typing.get_type_hints() resolves the
# signatures using it; psycopg_pool depends on typing_extensions.
if sys.version_info >= (3, 11):
    from typing import Unpack as Unpack
else:
    from typing_extensions import Unpack as Unpack

logger = logging.getLogger("pgfast")

Row: TypeAlias = Any
"""A result row: a ``dict`` keyed by column name, or a ``tuple`` (``row_type="tuple"``)."""

# One adapters context for every pgfast connection: a dict parameter is jsonb
# (a list is already an array in psycopg's defaults).
ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(dict, JsonbDumper)

# Connections idle longer than this are checked with an empty query before use;
# younger ones only when input is waiting on their socket (see input_waiting).
LIVENESS_CHECK_AFTER = 1.0
RETRYABLE_TX = frozenset({"40001", "40P01"})
# A prepared statement that the server connection does not have (26000), or
# already has (42P05): behind a pooler, another server connection than the
# one it was prepared on. The statement did not run.
PREPARED_ELSEWHERE = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)
# The longest period between two sweeps of idle connections.
MAX_SWEEP_PERIOD = 5.0


def input_waiting(fd: int) -> Callable[[], bool]:
    """A function saying, without blocking, whether ``fd`` has input (or EOF) waiting.

    An idle connection receives nothing unless the server ended the session
    (FATAL 57P01 on a restart or pg_terminate_backend, then EOF) or sent a
    notification: either way it gets a liveness check before a statement is
    sent, so no statement is ever sent on a connection known to be dead.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return lambda: bool(poller.poll(0))
    return lambda: bool(select.select([fd], [], [], 0)[0])  # Windows: no poll()


# Connection failures a later attempt may not meet: the network's (refused,
# reset, timed out, unreachable, cut mid-login) and the server's temporary
# refusals (starting or stopping, no free connection slot). Any other failure
# (a password, database, role, pg_hba or TLS refusal, a missing password)
# would only repeat. libpq gives connection failures no SQLSTATE, so its
# (English) words are all there is to go by; a failure not recognised here
# reaches the callers at once, as it did without retries.
_TRANSIENT_CONNECT_FAILURES = (
    "refused",
    "reset by peer",
    "timeout expired",
    "timed out",
    "unreachable",
    "no route to host",
    "closed the connection unexpectedly",
    "could not receive data",
    "could not send data",
    "could not send startup packet",
    "ssl syscall error",
    "eof detected",
    "starting up",
    "shutting down",
    "not yet accepting",
    "in recovery mode",
    "too many clients",
    "too many connections",
    "remaining connection slots",
)


def retry_connect(exc: BaseException) -> bool:
    """Whether a failed connection attempt is worth another one."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    message = str(exc).lower()
    return any(words in message for words in _TRANSIENT_CONNECT_FAILURES)


class ClientPrepareManager(PrepareManager):
    """psycopg's prepared statement cache, with statement names no other client uses.

    psycopg names its statements ``_pg3_0``, ``_pg3_1``... in every process:
    behind a pooler that shares server connections between clients (PgBouncer
    in transaction mode), one client's ``_pg3_3`` is another's, and the wrong
    statement runs. A random prefix per connection makes the names unique to
    it; psycopg never reuses a name for another statement on a connection.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"_pgf{secrets.token_hex(6)}"
        self._prefix = self.prefix.encode()

    def get(self, query: PostgresQuery, prepare: bool | None = None) -> tuple[Prepare, bytes]:
        prep, name = super().get(query, prepare)
        if prep is Prepare.SHOULD:
            name = self._prefix + name
        return prep, name


def sweep_period(idle_timeout: float | None) -> float:
    """Seconds between sweeps: a connection is closed at most this late after ``idle_timeout``."""
    if idle_timeout is None:
        return MAX_SWEEP_PERIOD
    return min(MAX_SWEEP_PERIOD, max(0.05, idle_timeout / 4))


class IsolationLevel(str, enum.Enum):
    """Transaction isolation levels for ``tx`` / ``transaction``."""

    READ_UNCOMMITTED = "read uncommitted"
    READ_COMMITTED = "read committed"
    REPEATABLE_READ = "repeatable read"
    SERIALIZABLE = "serializable"


def not_a_query(q: object) -> NoReturn:
    raise TypeError(
        f"expected an SQLQuery, got {type(q).__name__}: build queries with pgfast.sql, "
        'e.g. sql("SELECT * FROM t WHERE id = {}", 1)'
    )


def check_queries(queries: list[Any]) -> list[SQLQuery]:
    for q in queries:
        if not isinstance(q, SQLQuery):
            not_a_query(q)
    return queries


def safe_call(hook: Callable[..., Any], name: str, *args: Any) -> None:
    """Call a user hook; a hook that raises is logged, never propagated."""
    try:
        hook(*args)
    except Exception:
        logger.exception("pgfast: the %s hook raised an exception (ignored)", name)


def retry_attempts(retry: bool | int) -> int:
    if retry is True:
        return 10
    if retry is False:
        return 1
    if isinstance(retry, int) and retry >= 1:
        return retry
    raise ValueError(f"retry_serialization_failures must be a bool or an int >= 1, not {retry!r}")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter, capped."""
    return random.uniform(0.0, min(1.0, 0.01 * 2**attempt))


def _isolation(level: IsolationLevel | str) -> str:
    if isinstance(level, IsolationLevel):
        return level.value
    if isinstance(level, str):
        words = " ".join(level.replace("_", " ").lower().split())
        for member in IsolationLevel:
            if member.value == words:
                return words
    raise ValueError(
        f"isolation_level must be a pgfast.IsolationLevel or one of "
        f"{', '.join(repr(m.value) for m in IsolationLevel)}, not {level!r}"
    )


class TransactionOptions(TypedDict, total=False):
    """The keyword options of ``transaction()`` and ``tx()``, everywhere they exist."""

    isolation_level: IsolationLevel | str | None
    read_only: bool | None
    deferrable: bool | None
    statement_timeout: float | None
    lock_timeout: float | None
    idle_in_transaction_session_timeout: float | None


def check_transaction_options(options: Mapping[str, object]) -> None:
    """A TypeError naming the first unknown option: ``**options`` accepts any name."""
    known = TransactionOptions.__optional_keys__
    for name in options:
        if name not in known:
            raise TypeError(
                f"unknown transaction option {name!r}; the options are "
                f"{', '.join(sorted(known))} (and retry_serialization_failures for tx())"
            )


def begin_statement(options: TransactionOptions) -> str:
    """BEGIN with its options and SET LOCALs, as one multi-statement text (one round trip)."""
    check_transaction_options(options)
    words = ["BEGIN"]
    isolation_level = options.get("isolation_level")
    if isolation_level is not None:
        words.append("ISOLATION LEVEL " + _isolation(isolation_level).upper())
    read_only = options.get("read_only")
    if read_only is not None:
        words.append("READ ONLY" if read_only else "READ WRITE")
    deferrable = options.get("deferrable")
    if deferrable is not None:
        words.append("DEFERRABLE" if deferrable else "NOT DEFERRABLE")
    statements = [" ".join(words)]
    for name, seconds in (
        ("statement_timeout", options.get("statement_timeout")),
        ("lock_timeout", options.get("lock_timeout")),
        ("idle_in_transaction_session_timeout", options.get("idle_in_transaction_session_timeout")),
    ):
        if seconds is not None:
            check_seconds(name, seconds, allow_none=False)
            statements.append(f"SET LOCAL {name} = {millis(seconds)}")
    return "; ".join(statements)


def check_savepoint_options(options: Mapping[str, object]) -> None:
    """A savepoint takes no options: each set one is an error naming it."""
    for name, value in options.items():
        if value not in (None, False):
            raise ValueError(
                f"{name} cannot be set on a nested transaction (a savepoint); "
                "set it on the outermost transaction"
            )


def advisory_lock_query(function: str, key: int | tuple[int, int] | list[int]) -> SQLQuery:
    compose = _impl.compose.compose
    if isinstance(key, int) and not isinstance(key, bool):
        return compose(f"SELECT {function}({{}}::int8)", (key,), {})
    if (
        isinstance(key, (tuple, list))
        and len(key) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) for k in key)
    ):
        return compose(f"SELECT {function}({{}}::int4, {{}}::int4)", (key[0], key[1]), {})
    raise TypeError(f"an advisory lock key is an int or a pair of ints, not {key!r}")


def ended(what: str) -> NoReturn:
    raise Error(
        f"this {what} has already ended and cannot be used any more; "
        f"run the work inside the {what}'s block (or function)"
    )
