"""Throwaway PostgreSQL servers for tests: ``LocalCluster`` and the pytest plugin.

``with LocalCluster(replicas=2) as cluster:`` starts a primary and two
streaming replicas on free 127.0.0.1 ports; ``cluster.primary_url`` and
``cluster.replica_urls`` are their connection strings. The pytest plugin
(``pgfast.testing.pytest_plugin``, loaded automatically) provides the
session-scoped fixtures ``pg_url`` and ``pg_cluster``.
"""

from __future__ import annotations

from ._local import ClusterError, LocalCluster, find_pg_bin

__all__ = ["ClusterError", "LocalCluster", "find_pg_bin"]
