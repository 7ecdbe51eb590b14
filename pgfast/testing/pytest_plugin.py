"""pytest plugin (entry point ``pytest11``): PostgreSQL fixtures for tests.

- ``pg_url``: ``$DATABASE_URL`` when set, else the URL of a throwaway
  primary started on first use and stopped at the end of the session.
- ``pg_cluster``: a started ``LocalCluster`` with 2 streaming replicas, shared
  by the session. A test that stops, pauses or restarts one of its servers
  must put it back (``start_replica``, ``resume_replay``) before it ends.
- ``pg_bouncer``: a ``LocalPgBouncer`` in transaction mode in front of the
  ``pg_url`` server, shared by the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._local import LocalCluster
from ._pgbouncer import LocalPgBouncer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nodb: needs no PostgreSQL server")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL connection string: ``$DATABASE_URL`` or a throwaway server's."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with LocalCluster() as cluster:
        yield cluster.primary_url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """A throwaway primary with 2 streaming replicas, stopped at session end."""
    with LocalCluster(replicas=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_bouncer(pg_url: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer in transaction mode in front of ``pg_url``; connect to its ``.url``."""
    with LocalPgBouncer(pg_url) as bouncer:
        yield bouncer
