"""Replica selector, pure-Python twin of ``pgfast._selector_c``.

A :class:`Selector` chooses which of ``node_count`` nodes serves the next
read and tracks how many reads are in flight on each. It is shared by every
thread and asyncio task of a cluster, so each method is atomic.

Both twins behave identically, down to the ``random`` strategy's sequence:
it uses its own splitmix64 generator, so the same seed gives the same picks
in compiled and pure code. Arguments are read by their real type and value:
an ``int`` or ``str`` subclass counts as its plain value (its own methods,
comparisons included, are never used), and a ``__class__`` an object claims
is ignored.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MAX_NODES", "STRATEGIES", "NodeStats", "Selector"]

STRATEGIES = ("round_robin", "random", "least_busy")
# Eligibility and the up/down state are 64-bit masks in the compiled twin.
MAX_NODES = 64

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _exact_int(value: object, what: str) -> int:
    """``value`` as an exact int (an int subclass by its int value; bool is no int here)."""
    if type(value) is int:
        return value
    if not issubclass(type(value), int) or type(value) is bool:
        raise TypeError(f"{what}, not {type(value).__name__}")
    return int.__index__(value)  # type: ignore[arg-type]


class NodeStats(NamedTuple):
    """One node's counters, as returned by :meth:`Selector.snapshot`."""

    in_flight: int
    picks: int
    up: bool


class Selector:
    """Pick a node for each read: ``round_robin``, ``random`` or ``least_busy``.

    ``pick(eligible)`` returns the index of a node that is up and allowed by
    ``eligible`` (``None`` for all, an int bitmask with bit ``i`` for node
    ``i``, or one bool per node), counts it in flight and returns it; it
    returns -1 when no node qualifies. Every pick must be matched by one
    ``release(i)``.
    """

    __slots__ = (
        "_all",
        "_cursor",
        "_in_flight",
        "_lock",
        "_n",
        "_picks",
        "_state",
        "_strategy",
        "_up",
    )

    def __init__(self, node_count: int, strategy: str = "round_robin", seed: int | None = None):
        node_count = _exact_int(node_count, "node_count must be an int")
        if not 1 <= node_count <= MAX_NODES:
            raise ValueError(f"node_count must be between 1 and {MAX_NODES}, got {node_count}")
        if type(strategy) is not str and issubclass(type(strategy), str):
            strategy = str.__str__(strategy)
        if type(strategy) is not str or strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
            )
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        else:
            seed = _exact_int(seed, "seed must be an int or None")
        self._n = node_count
        self._strategy = strategy
        self._state = seed & _MASK64
        self._all = (1 << node_count) - 1
        self._up = self._all
        self._cursor = 0
        self._in_flight = [0] * node_count
        self._picks = [0] * node_count
        # A plain lock: pick() reads and writes several fields, which no single
        # GIL-atomic operation covers, and an uncontended acquire is cheap.
        self._lock = threading.Lock()

    @property
    def node_count(self) -> int:
        """Number of nodes."""
        return self._n

    @property
    def strategy(self) -> str:
        """The balancing strategy."""
        return self._strategy

    def pick(self, eligible: int | Sequence[bool] | None = None) -> int:
        """Choose a node that is up and eligible, count it in flight; -1 if none."""
        mask = self._up_mask_of(eligible)
        with self._lock:
            mask &= self._up
            if not mask:
                return -1
            n = self._n
            if self._strategy == "random":
                chosen = self._nth_bit(mask, self._below(mask.bit_count()))
            else:
                chosen = -1
                fewest = -1
                in_flight = self._in_flight
                least_busy = self._strategy == "least_busy"
                for k in range(n):
                    i = (self._cursor + k) % n
                    if mask >> i & 1 and (chosen < 0 or in_flight[i] < fewest):
                        chosen = i
                        fewest = in_flight[i]
                        if not least_busy or not fewest:
                            break
                self._cursor = (chosen + 1) % n
            self._in_flight[chosen] += 1
            self._picks[chosen] += 1
            return chosen

    def release(self, index: int) -> None:
        """End one in-flight read on node ``index``.

        Releasing a node with nothing in flight is a ``ValueError``: it means a
        pick was released twice, and clamping would hide that bug.
        """
        index = self._check(index)
        with self._lock:
            if not self._in_flight[index]:
                raise ValueError(f"release({index}): node {index} has no read in flight")
            self._in_flight[index] -= 1

    def mark_down(self, index: int) -> bool:
        """Take node ``index`` out of rotation; True if it was up."""
        bit = 1 << self._check(index)
        with self._lock:
            was_up = bool(self._up & bit)
            self._up &= ~bit
        return was_up

    def mark_up(self, index: int) -> bool:
        """Put node ``index`` back in rotation; True if it was down."""
        bit = 1 << self._check(index)
        with self._lock:
            was_down = not self._up & bit
            self._up |= bit
        return was_down

    def is_up(self, index: int) -> bool:
        """Whether node ``index`` is in rotation."""
        return bool(self._up >> self._check(index) & 1)

    def in_flight(self, index: int) -> int:
        """Reads currently in flight on node ``index``."""
        return self._in_flight[self._check(index)]

    def snapshot(self) -> list[NodeStats]:
        """Consistent per-node counters: in flight, total picks, up."""
        with self._lock:
            return [
                NodeStats(self._in_flight[i], self._picks[i], bool(self._up >> i & 1))
                for i in range(self._n)
            ]

    def __repr__(self) -> str:
        return f"Selector(node_count={self._n}, strategy={self._strategy!r})"

    def _check(self, index: object) -> int:
        """``index`` as an exact int naming one of the nodes."""
        index = _exact_int(index, "node index must be an int")
        if not 0 <= index < self._n:
            raise IndexError(f"node index {index} out of range for {self._n} nodes")
        return index

    def _up_mask_of(self, eligible: int | Sequence[bool] | None) -> int:
        if eligible is None:
            return self._all
        if issubclass(type(eligible), int) and type(eligible) is not bool:
            eligible = _exact_int(eligible, "")
            if not 0 <= eligible <= self._all:
                raise ValueError(
                    f"eligible bitmask {eligible:#x} has bits outside the {self._n} nodes"
                )
            return eligible
        if issubclass(type(eligible), (str, bytes)) or not isinstance(eligible, Sequence):
            raise TypeError(
                "eligible must be None, an int bitmask or a sequence of bools, "
                f"not {type(eligible).__name__}"
            )
        size = len(eligible)
        if size != self._n:
            raise ValueError(f"eligible has {size} entries for {self._n} nodes")
        # Every entry is read before any truth value is asked for, as in the
        # compiled twin: a __bool__ that changes ``eligible`` changes nothing.
        items = [eligible[i] for i in range(self._n)]
        mask = 0
        for i, item in enumerate(items):
            if item:
                mask |= 1 << i
        return mask

    def _below(self, bound: int) -> int:
        """A splitmix64 draw mapped to ``range(bound)`` (Lemire's multiply-shift)."""
        self._state = state = (self._state + _GOLDEN) & _MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return ((z >> 32) * bound) >> 32

    @staticmethod
    def _nth_bit(mask: int, nth: int) -> int:
        """Index of the ``nth`` (from 0) set bit of ``mask``."""
        for _ in range(nth):
            mask &= mask - 1
        return (mask & -mask).bit_length() - 1
