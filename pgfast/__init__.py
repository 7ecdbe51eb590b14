"""pgfast: a fast, dependable PostgreSQL client for Python services and batch loaders."""

from __future__ import annotations

from . import errors
from ._bulk_plan import bulk_condition
from ._cluster_async import AsyncCluster
from ._cluster_common import create_cluster, is_read_only
from ._cluster_sync import Cluster
from ._config import AsyncPoolOptions, PoolOptions
from ._exceptions import (
    CommitUnknownError,
    ConfigurationError,
    Error,
    NoPrimaryError,
    PoolClosedError,
    PoolTimeoutError,
    PostCommitError,
    QueryTimeoutError,
)
from ._factories import create_async_pool, create_pool
from ._impl import IMPL as __impl__
from ._pool_async import AsyncConnectionPool
from ._pool_common import IsolationLevel, TransactionOptions
from ._pool_sync import ConnectionPool
from ._split import split
from ._sql import SQLQuery, is_sql_query, sql
from ._transaction_async import AsyncConnection, AsyncTransaction
from ._transaction_sync import Connection, Transaction

__version__ = "0.1.0"

__all__ = [
    "AsyncCluster",
    "AsyncConnection",
    "AsyncConnectionPool",
    "AsyncPoolOptions",
    "AsyncTransaction",
    "Cluster",
    "CommitUnknownError",
    "ConfigurationError",
    "Connection",
    "ConnectionPool",
    "Error",
    "IsolationLevel",
    "NoPrimaryError",
    "PoolClosedError",
    "PoolOptions",
    "PoolTimeoutError",
    "PostCommitError",
    "QueryTimeoutError",
    "SQLQuery",
    "Transaction",
    "TransactionOptions",
    "__impl__",
    "bulk_condition",
    "create_async_pool",
    "create_cluster",
    "create_pool",
    "errors",
    "is_read_only",
    "is_sql_query",
    "split",
    "sql",
]
