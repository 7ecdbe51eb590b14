"""Benchmark fixtures: throwaway servers kept on CPUs apart from this process.

They override the pytest plugin's ``pg_url`` and ``pg_cluster``. On one machine
a round trip costs several times more when a backend runs on another CPU than
the client's, wherever the scheduler put it; pinned apart (see
``pgfast._bench.separate_cpus``), every connection pays the same and the
ratios measure the libraries, not the placement. ``DATABASE_URL`` still names
a server to use as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pgfast._bench import separate_cpus
from pgfast.testing import LocalCluster


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with LocalCluster() as cluster:
        separate_cpus(cluster)
        yield cluster.primary_url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(replicas=2) as cluster:
        separate_cpus(cluster)
        yield cluster
