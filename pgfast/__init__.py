"""pgfast: a fast, dependable PostgreSQL client for Python services and batch loaders."""

from __future__ import annotations

from . import errors
from ._bulk import bulk_condition
from ._exceptions import ConfigurationError, Error, PoolClosedError, PoolTimeoutError
from ._impl import IMPL as __impl__
from ._sql import SQLQuery, is_sql_query, sql

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "Error",
    "PoolClosedError",
    "PoolTimeoutError",
    "SQLQuery",
    "__impl__",
    "bulk_condition",
    "errors",
    "is_sql_query",
    "sql",
]
