"""pgfast's own exceptions. Server errors stay psycopg's classes; pgfast.errors holds both."""

from __future__ import annotations


class Error(Exception):
    """Base class of the errors raised by pgfast itself."""


class ConfigurationError(Error):
    """pgfast was not told how to reach the database, or was told wrongly."""


class PoolTimeoutError(Error, TimeoutError):
    """No connection became free within ``queue_timeout`` seconds."""


class PoolClosedError(Error):
    """The pool (or cluster) was disposed; it takes no new operations."""


class QueryTimeoutError(Error, TimeoutError):
    """A statement did not answer within ``query_timeout`` seconds.

    pgfast asked the server to cancel it; when the server did not confirm
    within one more second (a stalled link), the connection was closed.
    """


class CommitUnknownError(Error):
    """The connection was lost after a COMMIT (or a write outside a transaction)
    was sent and before its answer: it may or may not have committed."""


class QueryTimeoutCommitUnknownError(CommitUnknownError, QueryTimeoutError):
    """A COMMIT (or a write outside a transaction) passed ``query_timeout`` on a
    stalled link, which was closed: it may or may not have committed."""


class PostCommitError(Error):
    """The transaction committed, then post-commit steps raised.

    ``result`` is the transaction function's return value, ``errors`` every
    failing step's exception (the first is also ``__cause__``).
    """

    def __init__(self, message: str, result: object, errors: list[BaseException]) -> None:
        super().__init__(message)
        self.result = result
        self.errors = errors


class NoPrimaryError(Error):
    """A cluster write found no writable primary within ``failover_timeout`` seconds.

    The message names each node and what it last answered; nothing was written.
    """
