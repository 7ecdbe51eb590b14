"""Replica selector: one pick + release, compiled vs pure vs a hand-rolled peer.

Each round is 1,000 pick+release pairs on 3 nodes, filtered by a bitmask as the
cluster does for lag/replay checks. The peer is what a cluster without a
selector would write (``itertools.cycle``, ``random.Random``, ``min`` over a
counter list): no down/eligibility handling, no thread safety, so it is a
floor, not a rival. Compare within a group: ``--benchmark-group-by=group``.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pgfast import _selector_py

try:
    from pgfast import _selector_c
except ImportError:  # pure-only install: the compiled rows are skipped
    _selector_c = None  # type: ignore[assignment]

ROUNDS = 1000
NODES = 3
MASK = 0b111
STRATEGIES = ("round_robin", "random", "least_busy")

pytestmark = pytest.mark.nodb


def _loop(pick: Callable[[int], int], release: Callable[[int], None]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(ROUNDS):
            release(pick(MASK))

    return run


def _peer(strategy: str) -> Callable[[], None]:
    counts = [0] * NODES
    if strategy == "round_robin":
        cycle = itertools.cycle(range(NODES))

        def pick(_mask: int) -> int:
            return next(cycle)

    elif strategy == "random":
        rng = random.Random(1)

        def pick(_mask: int) -> int:
            return rng.randrange(NODES)

    else:

        def pick(_mask: int) -> int:
            node = min(range(NODES), key=counts.__getitem__)
            counts[node] += 1
            return node

    def release(node: int) -> None:
        if strategy == "least_busy":
            counts[node] -= 1

    return _loop(pick, release)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("impl", ["cython", "python", "peer"])
def test_pick_release(benchmark: BenchmarkFixture, impl: str, strategy: str) -> None:
    benchmark.group = f"selector pick+release x{ROUNDS}: {strategy}"
    if impl == "peer":
        benchmark(_peer(strategy))
        return
    if impl == "cython" and _selector_c is None:
        pytest.skip("compiled twin not built")
    mod = _selector_c if impl == "cython" else _selector_py
    sel = mod.Selector(NODES, strategy, seed=1)
    benchmark(_loop(sel.pick, sel.release))
    assert [s.in_flight for s in sel.snapshot()] == [0] * NODES


@pytest.mark.parametrize("locked", [True, False], ids=["lock", "no-lock"])
def test_pure_lock_cost(benchmark: BenchmarkFixture, locked: bool) -> None:
    """What the pure twin's lock costs (no-lock is unsafe on free-threaded builds)."""
    benchmark.group = f"pure twin lock cost, pick+release x{ROUNDS}: least_busy"
    sel = _selector_py.Selector(NODES, "least_busy")
    if not locked:
        sel._lock = contextlib.nullcontext()  # type: ignore[assignment]
    benchmark(_loop(sel.pick, sel.release))
