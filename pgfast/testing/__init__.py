"""Throwaway PostgreSQL servers for tests: ``LocalCluster`` and the pytest plugin.

``with LocalCluster(replicas=2) as cluster:`` starts a primary and two
streaming replicas on free 127.0.0.1 ports; ``cluster.primary_url`` and
``cluster.replica_urls`` are their connection strings. ``FaultProxy`` is a
loopback TCP proxy that adds latency, stalls and resets connections;
``LocalPgBouncer`` runs a throwaway PgBouncer in front of a server. The pytest
plugin (``pgfast.testing.pytest_plugin``, loaded automatically) provides the
session-scoped fixtures ``pg_url``, ``pg_cluster`` and ``pg_bouncer``.
"""

from __future__ import annotations

from ._local import ClusterError, LocalCluster, find_pg_bin
from ._pgbouncer import LocalPgBouncer, find_pgbouncer
from ._proxy import FaultProxy

__all__ = [
    "ClusterError",
    "FaultProxy",
    "LocalCluster",
    "LocalPgBouncer",
    "find_pg_bin",
    "find_pgbouncer",
]
