"""Server errors: psycopg's exception classes, re-exported.

``pgfast.errors.UniqueViolation`` is ``psycopg.errors.UniqueViolation``, and
so on for every SQLSTATE; ``lookup(sqlstate)`` finds a class by its code.
pgfast's own errors (``pgfast.Error`` and its subclasses) are here too.
"""

from psycopg.errors import *  # noqa: F403
from psycopg.errors import lookup

from ._exceptions import ConfigurationError, Error, PoolClosedError, PoolTimeoutError

__all__ = ["ConfigurationError", "Error", "PoolClosedError", "PoolTimeoutError", "lookup"]
