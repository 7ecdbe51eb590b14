"""Server errors: psycopg's exception classes, re-exported.

``pgfast.errors.UniqueViolation`` is ``psycopg.errors.UniqueViolation``, and
so on for every SQLSTATE; ``lookup(sqlstate)`` finds a class by its code.
pgfast's own errors are ``pgfast.Error`` and its subclasses.
"""

from psycopg.errors import *  # noqa: F403
from psycopg.errors import lookup as lookup
