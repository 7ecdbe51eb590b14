"""pgfast's own exceptions. Server errors stay psycopg's classes (pgfast.errors)."""

from __future__ import annotations


class Error(Exception):
    """Base class of the errors raised by pgfast itself."""


class ConfigurationError(Error):
    """pgfast was not told how to reach the database, or was told wrongly."""


class PoolTimeoutError(Error, TimeoutError):
    """No connection became free within ``queue_timeout`` seconds."""


class PoolClosedError(Error):
    """The pool (or cluster) was disposed; it takes no new operations."""
