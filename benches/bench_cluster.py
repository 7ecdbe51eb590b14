"""Cluster: read throughput with 2 replicas vs the primary alone, and ``is_read_only`` overhead.

``throughput``: one round is 500 reads (``SELECT`` of 100 generated rows) by 10
concurrent asyncio tasks, through an ``AsyncCluster`` (2 replicas) or through
the primary's pool alone; the peer is asyncpg's pool on the primary. All the
servers of ``pg_cluster`` run on this machine, on the CPUs the client does not
use (benches/conftest.py), so spreading reads gains little here: the numbers
measure the cluster's routing overhead, not the capacity a real replica adds.

``is_read_only``: the public wrapper (type check, cached ``format()``, classifier)
vs the classifier called on the text directly, compiled and pure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pgfast import _classify_py
from pgfast._cluster_common import create_cluster, is_read_only
from pgfast._factories import create_async_pool
from pgfast._sql import sql
from pgfast.testing import LocalCluster

try:
    from pgfast import _classify_c
except ImportError:  # pure-only install: the compiled row is skipped
    _classify_c = None  # type: ignore[assignment]

TASKS = 10
READS = 500
QUERY = "SELECT g, g * 2 AS twice FROM generate_series(1, 100) g"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _burst(read: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async def worker() -> None:
            for _ in range(READS // TASKS):
                await read()

        await asyncio.gather(*(worker() for _ in range(TASKS)))

    return run


def _bench(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, burst: Callable[[], Any]
) -> None:
    loop.run_until_complete(burst())  # warm up: open every pool's connections
    benchmark.pedantic(lambda: loop.run_until_complete(burst()), rounds=10, iterations=1)


@pytest.mark.benchmark(group="throughput")
def test_cluster_two_replicas(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, pg_cluster: LocalCluster
) -> None:
    pools = [
        create_async_pool(u, pool_size=TASKS)
        for u in (pg_cluster.primary_url, *pg_cluster.replica_urls)
    ]
    cluster = create_cluster(pools[0], pools[1:])
    q = sql.unsafe(QUERY)
    _bench(benchmark, loop, _burst(lambda: cluster.query(q)))  # type: ignore[arg-type, return-value]
    stats = cluster.stats()
    assert stats["primary"]["routed"] == 0 and all(r["routed"] for r in stats["replicas"])
    loop.run_until_complete(cluster.dispose())  # type: ignore[arg-type]


@pytest.mark.benchmark(group="throughput")
def test_primary_pool_alone(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, pg_cluster: LocalCluster
) -> None:
    pool = create_async_pool(pg_cluster.primary_url, pool_size=TASKS)
    q = sql.unsafe(QUERY)
    _bench(benchmark, loop, _burst(lambda: pool.query(q)))
    loop.run_until_complete(pool.dispose())


@pytest.mark.benchmark(group="throughput")
def test_peer_asyncpg_primary(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, pg_cluster: LocalCluster
) -> None:
    async def connect() -> asyncpg.Pool:
        # asyncpg binds the pool to the loop running when it is created.
        return await asyncpg.create_pool(pg_cluster.primary_url, min_size=TASKS, max_size=TASKS)

    pool = loop.run_until_complete(connect())
    _bench(benchmark, loop, _burst(lambda: pool.fetch(QUERY)))
    loop.run_until_complete(pool.close())


CLASSIFIED = sql("SELECT u.id, u.name FROM users u JOIN orgs o ON o.id = u.org WHERE u.id = {}", 1)
TEXT = CLASSIFIED.format()[0]


@pytest.mark.nodb
@pytest.mark.benchmark(group="is_read_only")
def test_public_wrapper(benchmark: BenchmarkFixture) -> None:
    assert benchmark(is_read_only, CLASSIFIED) is True


@pytest.mark.nodb
@pytest.mark.benchmark(group="is_read_only")
@pytest.mark.parametrize("impl", ["cython", "python"])
def test_classifier_on_text(benchmark: BenchmarkFixture, impl: str) -> None:
    if impl == "cython" and _classify_c is None:
        pytest.skip("compiled classifier not built")
    module = _classify_c if impl == "cython" else _classify_py
    assert benchmark(module.is_read_only, TEXT) is True
