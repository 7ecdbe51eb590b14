"""The replica selector, compiled and pure twins (``pgfast._selector_c`` / ``_py``)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import NO_EXTENSIONS, twin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.nodb

STRATEGIES = ("round_robin", "random", "least_busy")


def make(impl: str, *args: Any, **kwargs: Any) -> Any:
    return twin("_selector", impl).Selector(*args, **kwargs)


# --- construction -----------------------------------------------------------


def test_module_constants(impl: str) -> None:
    mod = twin("_selector", impl)
    assert mod.STRATEGIES == STRATEGIES
    assert mod.MAX_NODES == 64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_properties_and_repr(impl: str, strategy: str) -> None:
    sel = make(impl, 3, strategy)
    assert (sel.node_count, sel.strategy) == (3, strategy)
    assert repr(sel) == f"Selector(node_count=3, strategy={strategy!r})"
    assert make(impl, 2).strategy == "round_robin"


@pytest.mark.parametrize("count", [0, -1, 65])
def test_node_count_out_of_range(impl: str, count: int) -> None:
    with pytest.raises(ValueError, match=rf"node_count must be between 1 and 64, got {count}"):
        make(impl, count)


@pytest.mark.parametrize("count", ["2", 2.0, True, None])
def test_node_count_not_int(impl: str, count: object) -> None:
    with pytest.raises(TypeError, match="node_count must be an int"):
        make(impl, count)


@pytest.mark.parametrize("strategy", ["fastest", "ROUND_ROBIN", "", 1])
def test_unknown_strategy_names_allowed_values(impl: str, strategy: object) -> None:
    with pytest.raises(ValueError) as info:
        make(impl, 2, strategy)
    message = str(info.value)
    assert repr(strategy) in message
    assert all(repr(name) in message for name in STRATEGIES)


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_seed_not_int(impl: str, seed: object) -> None:
    with pytest.raises(TypeError, match="seed must be an int or None"):
        make(impl, 2, "random", seed)


def test_boundary_sizes(impl: str) -> None:
    one = make(impl, 1, "random")
    assert [one.pick() for _ in range(5)] == [0] * 5
    big = make(impl, 64, "round_robin")
    assert [big.pick() for _ in range(65)] == [*range(64), 0]
    assert big.pick((1 << 64) - 1) == 1
    assert big.pick(1 << 63) == 63


# --- round robin ------------------------------------------------------------


def test_round_robin_rotates(impl: str) -> None:
    sel = make(impl, 3)
    assert [sel.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_is_exactly_even(impl: str) -> None:
    sel = make(impl, 2)
    counts: Counter[int] = Counter()
    for _ in range(1000):
        node = sel.pick()
        counts[node] += 1
        sel.release(node)
    assert counts == {0: 500, 1: 500}
    assert [s.picks for s in sel.snapshot()] == [500, 500]


def test_round_robin_skips_down_and_filtered(impl: str) -> None:
    sel = make(impl, 4)
    sel.mark_down(1)
    assert [sel.pick() for _ in range(6)] == [0, 2, 3, 0, 2, 3]
    # bit i of the mask is node i: 0b1001 allows nodes 0 and 3
    assert [sel.pick(0b1001) for _ in range(3)] == [0, 3, 0]
    assert [sel.pick([False, True, True, False]) for _ in range(2)] == [2, 2]


# --- random -----------------------------------------------------------------


def test_random_follows_splitmix64(impl: str) -> None:
    # splitmix64 with seed 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4,
    # 0x06c45d188009454f; over 64 nodes a draw maps to its top 6 bits.
    sel = make(impl, 64, "random", seed=0)
    assert [sel.pick() for _ in range(3)] == [0xE2 >> 2, 0x6E >> 2, 0x06 >> 2]


def test_random_same_seed_same_sequence(impl: str) -> None:
    a, b, c = (make(impl, 5, "random", seed=s) for s in (42, 42, 43))
    seq_a, seq_b, seq_c = ([x.pick() for _ in range(200)] for x in (a, b, c))
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_random_seed_is_taken_modulo_2_64(impl: str) -> None:
    a, b = make(impl, 7, "random", seed=-1), make(impl, 7, "random", seed=(1 << 64) - 1)
    assert [a.pick() for _ in range(50)] == [b.pick() for _ in range(50)]


def test_random_spreads_over_eligible_only(impl: str) -> None:
    sel = make(impl, 4, "random", seed=7)
    sel.mark_down(3)
    counts = Counter(sel.pick([True, True, False, True]) for _ in range(3000))
    assert set(counts) == {0, 1}
    assert all(1300 < n < 1700 for n in counts.values())


def test_random_without_seed_varies(impl: str) -> None:
    sequences = {tuple(make(impl, 8, "random").pick() for _ in range(32)) for _ in range(3)}
    assert len(sequences) > 1


# --- least busy -------------------------------------------------------------


def test_least_busy_prefers_fewest_in_flight(impl: str) -> None:
    sel = make(impl, 3, "least_busy")
    assert [sel.pick() for _ in range(3)] == [0, 1, 2]
    sel.release(1)
    assert sel.pick() == 1
    sel.release(2)
    assert sel.pick() == 2


def test_least_busy_breaks_ties_round_robin(impl: str) -> None:
    sel = make(impl, 3, "least_busy")
    # always releasing keeps every count at 0: a pure rotation
    picks = []
    for _ in range(6):
        picks.append(sel.pick())
        sel.release(picks[-1])
    assert picks == [0, 1, 2, 0, 1, 2]
    # all at 1 in flight after three picks: the rotation continues from node 0
    assert [sel.pick() for _ in range(4)] == [0, 1, 2, 0]


def test_least_busy_respects_filter(impl: str) -> None:
    sel = make(impl, 3, "least_busy")
    assert sel.pick() == 0
    assert sel.pick(0b001) == 0  # node 0 is busier but the only one allowed
    assert sel.pick(0b101) == 2
    assert [s.in_flight for s in sel.snapshot()] == [2, 0, 1]


# --- eligibility, up/down ---------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_eligible_node_returns_minus_one(impl: str, strategy: str) -> None:
    sel = make(impl, 3, strategy, seed=1)
    assert sel.pick(0) == -1
    assert sel.pick([False] * 3) == -1
    for i in range(3):
        sel.mark_down(i)
    assert sel.pick() == -1
    sel.mark_up(1)
    assert sel.pick(0b110) == 1
    assert sel.pick(0b101) == -1
    assert [tuple(s) for s in sel.snapshot()] == [(0, 0, False), (1, 1, True), (0, 0, False)]


def test_mark_down_up_report_changes(impl: str) -> None:
    sel = make(impl, 2)
    assert sel.is_up(0) is True
    assert sel.mark_down(0) is True
    assert sel.mark_down(0) is False
    assert sel.is_up(0) is False
    assert sel.is_up(1) is True
    assert sel.mark_up(0) is True
    assert sel.mark_up(0) is False
    assert sel.is_up(0) is True


def test_sequence_filter_uses_truthiness(impl: str) -> None:
    sel = make(impl, 3)
    assert sel.pick((0, "", 1)) == 2
    assert sel.pick(range(3)) == 1  # range is a Sequence: 0 is falsy


@pytest.mark.parametrize(
    ("eligible", "error", "message"),
    [
        (0b1000, ValueError, "eligible bitmask 0x8 has bits outside the 3 nodes"),
        (-1, ValueError, "eligible bitmask -0x1 has bits outside the 3 nodes"),
        (1 << 80, ValueError, "has bits outside the 3 nodes"),
        ([True, True], ValueError, "eligible has 2 entries for 3 nodes"),
        ([True] * 4, ValueError, "eligible has 4 entries for 3 nodes"),
        (True, TypeError, "not bool"),
        (1.0, TypeError, "not float"),
        ("101", TypeError, "not str"),
        ({0, 1}, TypeError, "not set"),
    ],
)
def test_bad_filter(impl: str, eligible: object, error: type[Exception], message: str) -> None:
    sel = make(impl, 3)
    with pytest.raises(error, match=message):
        sel.pick(eligible)
    assert sel.snapshot()[0].picks == 0


# --- release and indexes ----------------------------------------------------


def test_release_without_pick_is_an_error(impl: str) -> None:
    sel = make(impl, 2)
    with pytest.raises(ValueError, match=r"release\(1\): node 1 has no read in flight"):
        sel.release(1)
    node = sel.pick()
    sel.release(node)
    with pytest.raises(ValueError, match="has no read in flight"):
        sel.release(node)
    assert sel.in_flight(node) == 0


@pytest.mark.parametrize("method", ["release", "mark_down", "mark_up", "is_up", "in_flight"])
@pytest.mark.parametrize("index", [-1, 2, 64, 1 << 70])
def test_index_out_of_range(impl: str, method: str, index: int) -> None:
    sel = make(impl, 2)
    with pytest.raises(IndexError, match=rf"node index {index} out of range for 2 nodes"):
        getattr(sel, method)(index)


@pytest.mark.parametrize("method", ["release", "mark_down", "mark_up", "is_up", "in_flight"])
@pytest.mark.parametrize("index", ["0", 0.0, None, False])
def test_index_not_int(impl: str, method: str, index: object) -> None:
    sel = make(impl, 2)
    with pytest.raises(TypeError, match="node index must be an int"):
        getattr(sel, method)(index)


# --- concurrency ------------------------------------------------------------


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads far more often than usual, to expose lost updates."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.usefixtures("busy_switching")
def test_threads_leave_nothing_in_flight(impl: str, strategy: str) -> None:
    threads, rounds, nodes = 8, 10_000, 3
    sel = make(impl, nodes, strategy, seed=3)
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        try:
            start.wait()
            for n in range(rounds):
                # hold two at once so in-flight counts really vary across threads
                a = sel.pick()
                b = sel.pick(None if n % 2 else [True, worker % 2 == 0, True])
                sel.release(a)
                sel.release(b)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    stats = sel.snapshot()
    assert [s.in_flight for s in stats] == [0] * nodes
    assert sum(s.picks for s in stats) == threads * rounds * 2


@pytest.mark.usefixtures("busy_switching")
def test_threads_keep_round_robin_exact(impl: str) -> None:
    """Each pick advances the rotation atomically: 80,000 picks split 26,667/26,667/26,666."""
    sel = make(impl, 3)

    def work() -> None:
        for _ in range(10_000):
            sel.release(sel.pick())

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert [tuple(s) for s in sel.snapshot()] == [
        (0, 26_667, True),
        (0, 26_667, True),
        (0, 26_666, True),
    ]


async def test_tasks_spread_by_least_busy(impl: str) -> None:
    sel = make(impl, 2, "least_busy")
    peak = [0, 0]

    async def read() -> None:
        node = sel.pick()
        peak[node] = max(peak[node], sel.in_flight(node))
        await asyncio.sleep(0)
        sel.release(node)

    await asyncio.gather(*(read() for _ in range(50)))
    assert peak == [25, 25]
    assert [s.in_flight for s in sel.snapshot()] == [0, 0]


# --- properties ---------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, str, int, list[tuple[str, object]]]:
    """A node count, strategy, seed and a list of operations, some invalid."""
    n = draw(st.integers(1, 6))
    index = st.integers(-1, n)
    eligible = st.one_of(
        st.none(),
        st.integers(-1, (1 << n) + 1),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.booleans(), max_size=n + 1),
    )
    op = st.one_of(
        st.tuples(st.just("pick"), eligible),
        st.tuples(st.sampled_from(["release", "mark_down", "mark_up"]), index),
        st.tuples(st.sampled_from(["is_up", "in_flight"]), index),
    )
    return (
        n,
        draw(st.sampled_from(STRATEGIES)),
        draw(st.integers(-(1 << 65), 1 << 65)),
        draw(st.lists(op, max_size=60)),
    )


def replay(sel: Any, ops: list[tuple[str, object]]) -> list[object]:
    """Outcome of each operation: its result, or its error's type and message."""
    out: list[object] = []
    for name, arg in ops:
        call: Callable[[object], object] = getattr(sel, name)
        try:
            out.append(call(arg))
        except (ValueError, TypeError, IndexError) as exc:
            out.append((type(exc), str(exc)))
    out.append([tuple(s) for s in sel.snapshot()])
    return out


@pytest.mark.skipif(NO_EXTENSIONS, reason="parity needs the compiled twin")
@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_compiled_and_pure_agree(scenario: tuple[int, str, int, list[tuple[str, object]]]) -> None:
    n, strategy, seed, ops = scenario
    compiled = replay(make("cython", n, strategy, seed), ops)
    pure = replay(make("python", n, strategy, seed), ops)
    assert compiled == pure


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenarios())
def test_matches_model(impl: str, scenario: tuple[int, str, int, list[tuple[str, object]]]) -> None:
    """Every pick is up and eligible, -1 only when none is, and counts add up."""
    n, strategy, seed, ops = scenario
    sel = make(impl, n, strategy, seed)
    in_flight, picks, up = [0] * n, [0] * n, [True] * n
    for name, arg in ops:
        if name != "pick" and not (isinstance(arg, int) and 0 <= arg < n):
            with pytest.raises(IndexError):
                getattr(sel, name)(arg)
            continue
        if name == "pick":
            if arg is None:
                allowed = [True] * n
            elif isinstance(arg, int):
                if not 0 <= arg < 1 << n:
                    with pytest.raises(ValueError):
                        sel.pick(arg)
                    continue
                allowed = [bool(arg >> i & 1) for i in range(n)]
            else:
                assert isinstance(arg, list)
                if len(arg) != n:
                    with pytest.raises(ValueError):
                        sel.pick(arg)
                    continue
                allowed = arg
            candidates = [i for i in range(n) if allowed[i] and up[i]]
            node = sel.pick(arg)
            if not candidates:
                assert node == -1
                continue
            assert node in candidates
            if strategy == "least_busy":
                assert in_flight[node] == min(in_flight[i] for i in candidates)
            in_flight[node] += 1
            picks[node] += 1
        elif name == "release":
            assert isinstance(arg, int)
            if in_flight[arg]:
                sel.release(arg)
                in_flight[arg] -= 1
            else:
                with pytest.raises(ValueError):
                    sel.release(arg)
        elif name in ("mark_down", "mark_up"):
            assert isinstance(arg, int)
            assert getattr(sel, name)(arg) is (up[arg] == (name == "mark_down"))
            up[arg] = name == "mark_up"
        elif name == "is_up":
            assert isinstance(arg, int)
            assert sel.is_up(arg) is up[arg]
        else:
            assert isinstance(arg, int)
            assert sel.in_flight(arg) == in_flight[arg]
    assert [tuple(s) for s in sel.snapshot()] == list(zip(in_flight, picks, up, strict=True))
