"""Replica selector, pure-Python twin of ``pgfast._selector_c``.

A :class:`Selector` chooses which of ``node_count`` nodes serves the next
read and tracks how many reads are in flight on each. It is shared by every
thread and asyncio task of a cluster, so each method is atomic.

Both twins behave identically, down to the ``random`` strategy's sequence:
it uses its own splitmix64 generator, so the same seed gives the same picks
in compiled and pure code.
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
        if not isinstance(node_count, int) or isinstance(node_count, bool):
            raise TypeError(f"node_count must be an int, not {type(node_count).__name__}")
        if not 1 <= node_count <= MAX_NODES:
            raise ValueError(f"node_count must be between 1 and {MAX_NODES}, got {node_count}")
        if strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
            )
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        elif not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
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
        self._check(index)
        with self._lock:
            if not self._in_flight[index]:
                raise ValueError(f"release({index}): node {index} has no read in flight")
            self._in_flight[index] -= 1

    def mark_down(self, index: int) -> bool:
        """Take node ``index`` out of rotation; True if it was up."""
        self._check(index)
        bit = 1 << index
        with self._lock:
            was_up = bool(self._up & bit)
            self._up &= ~bit
        return was_up

    def mark_up(self, index: int) -> bool:
        """Put node ``index`` back in rotation; True if it was down."""
        self._check(index)
        bit = 1 << index
        with self._lock:
            was_down = not self._up & bit
            self._up |= bit
        return was_down

    def is_up(self, index: int) -> bool:
        """Whether node ``index`` is in rotation."""
        self._check(index)
        return bool(self._up >> index & 1)

    def in_flight(self, index: int) -> int:
        """Reads currently in flight on node ``index``."""
        self._check(index)
        return self._in_flight[index]

    def snapshot(self) -> list[NodeStats]:
        """Consistent per-node counters: in flight, total picks, up."""
        with self._lock:
            return [
                NodeStats(self._in_flight[i], self._picks[i], bool(self._up >> i & 1))
                for i in range(self._n)
            ]

    def __repr__(self) -> str:
        return f"Selector(node_count={self._n}, strategy={self._strategy!r})"

    def _check(self, index: int) -> None:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"node index must be an int, not {type(index).__name__}")
        if not 0 <= index < self._n:
            raise IndexError(f"node index {index} out of range for {self._n} nodes")

    def _up_mask_of(self, eligible: int | Sequence[bool] | None) -> int:
        if eligible is None:
            return self._all
        if isinstance(eligible, int) and not isinstance(eligible, bool):
            if not 0 <= eligible <= self._all:
                raise ValueError(
                    f"eligible bitmask {eligible:#x} has bits outside the {self._n} nodes"
                )
            return eligible
        if isinstance(eligible, (str, bytes)) or not isinstance(eligible, Sequence):
            raise TypeError(
                "eligible must be None, an int bitmask or a sequence of bools, "
                f"not {type(eligible).__name__}"
            )
        if len(eligible) != self._n:
            raise ValueError(f"eligible has {len(eligible)} entries for {self._n} nodes")
        mask = 0
        for i in range(self._n):
            if eligible[i]:
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
