# Compiled twin of pgfast/_selector_py.py; pgfast/_impl.py chooses one of the two for the process.
# cython: freethreading_compatible=True
"""Replica selector, compiled twin of ``pgfast._selector_py``.

A :class:`Selector` chooses which of ``node_count`` nodes serves the next
read and tracks how many reads are in flight on each. It is shared by every
thread and asyncio task of a cluster, so each method is atomic.

Both twins behave identically, down to the ``random`` strategy's sequence:
it uses its own splitmix64 generator, so the same seed gives the same picks
in compiled and pure code. Arguments are read by their real type and value:
an ``int`` or ``str`` subclass counts as its plain value (its own methods,
comparisons included, are never used), and a ``__class__`` an object claims
is ignored.

Thread safety: every state change happens in a ``critical_section`` on the
selector that makes no Python call (arguments are converted to C values
before it, result objects built after it). On a GIL build the section is a
no-op and the GIL alone makes it atomic, because nothing inside can run
Python code or release the GIL. On a free-threaded build it is a per-object
lock, hence ``freethreading_compatible`` (not yet exercised on such a build;
CPython still re-enables the GIL there while any imported extension lacks the
flag).
"""

from collections.abc import Sequence
from os import urandom
from typing import NamedTuple

cimport cython
from libc.stdint cimport uint64_t

cdef extern from "Python.h":
    # An exact str copy of a str subclass, without calling any of its methods.
    str PyUnicode_FromObject(object)

__all__ = ["MAX_NODES", "STRATEGIES", "NodeStats", "Selector"]

STRATEGIES = ("round_robin", "random", "least_busy")

cdef enum:
    # Eligibility and the up/down state are 64-bit masks.
    _MAX = 64

MAX_NODES = _MAX

cdef enum Strategy:
    ROUND_ROBIN
    RANDOM
    LEAST_BUSY


class NodeStats(NamedTuple):
    """One node's counters, as returned by :meth:`Selector.snapshot`."""

    in_flight: int
    picks: int
    up: bool


cdef object _exact_int(object value, str what):
    """``value`` as an exact int (an int subclass by its int value; bool is no int here)."""
    if type(value) is int:
        return value
    if not isinstance(value, int) or type(value) is bool:
        raise TypeError(f"{what}, not {type(value).__name__}")
    return int.__index__(value)


cdef inline int _popcount(uint64_t mask) noexcept nogil:
    cdef int count = 0
    while mask:
        mask &= mask - 1
        count += 1
    return count


cdef inline int _nth_bit(uint64_t mask, int nth) noexcept nogil:
    """Index of the ``nth`` (from 0) set bit of ``mask``."""
    cdef int i = 0
    while nth > 0:
        mask &= mask - 1
        nth -= 1
    while not (mask >> i) & 1:
        i += 1
    return i


@cython.final
cdef class Selector:
    """Pick a node for each read: ``round_robin``, ``random`` or ``least_busy``.

    ``pick(eligible)`` returns the index of a node that is up and allowed by
    ``eligible`` (``None`` for all, an int bitmask with bit ``i`` for node
    ``i``, or one bool per node), counts it in flight and returns it; it
    returns -1 when no node qualifies. Every pick must be matched by one
    ``release(i)``.
    """

    cdef int _n
    cdef int _cursor
    cdef Strategy _kind
    cdef object _strategy
    cdef uint64_t _state
    cdef uint64_t _all
    cdef uint64_t _up
    cdef Py_ssize_t _in_flight[_MAX]
    cdef Py_ssize_t _picks[_MAX]

    def __init__(self, node_count, strategy="round_robin", seed=None):
        cdef int i
        node_count = _exact_int(node_count, "node_count must be an int")
        if not 1 <= node_count <= MAX_NODES:
            raise ValueError(f"node_count must be between 1 and {MAX_NODES}, got {node_count}")
        if type(strategy) is not str and isinstance(strategy, str):
            strategy = PyUnicode_FromObject(strategy)
        if type(strategy) is not str or strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
            )
        if seed is None:
            seed = int.from_bytes(urandom(8), "little")
        else:
            seed = _exact_int(seed, "seed must be an int or None")
        self._n = node_count
        self._strategy = strategy
        self._kind = (
            RANDOM if strategy == "random" else LEAST_BUSY if strategy == "least_busy"
            else ROUND_ROBIN
        )
        self._state = seed & 0xFFFFFFFFFFFFFFFF
        self._all = <uint64_t>-1 if self._n == 64 else ((<uint64_t>1) << self._n) - 1
        self._up = self._all
        self._cursor = 0
        for i in range(self._n):
            self._in_flight[i] = 0
            self._picks[i] = 0

    @property
    def node_count(self):
        """Number of nodes."""
        return self._n

    @property
    def strategy(self):
        """The balancing strategy."""
        return self._strategy

    def pick(self, eligible=None):
        """Choose a node that is up and eligible, count it in flight; -1 if none."""
        cdef uint64_t mask = self._all if eligible is None else self._up_mask_of(eligible)
        cdef int chosen
        with cython.critical_section(self):
            chosen = self._pick(mask & self._up)
        return chosen

    cdef inline int _pick(self, uint64_t mask) noexcept:
        cdef int n = self._n
        cdef int chosen = -1
        cdef int i, k
        cdef Py_ssize_t fewest = -1
        if not mask:
            return -1
        if self._kind == RANDOM:
            chosen = _nth_bit(mask, self._below(_popcount(mask)))
        else:
            for k in range(n):
                i = (self._cursor + k) % n
                if (mask >> i) & 1 and (chosen < 0 or self._in_flight[i] < fewest):
                    chosen = i
                    fewest = self._in_flight[i]
                    if self._kind != LEAST_BUSY or not fewest:
                        break
            self._cursor = (chosen + 1) % n
        self._in_flight[chosen] += 1
        self._picks[chosen] += 1
        return chosen

    def release(self, index):
        """End one in-flight read on node ``index``.

        Releasing a node with nothing in flight is a ``ValueError``: it means a
        pick was released twice, and clamping would hide that bug.
        """
        cdef int i = self._index(index)
        cdef bint ok
        with cython.critical_section(self):
            ok = self._in_flight[i] > 0
            if ok:
                self._in_flight[i] -= 1
        if not ok:
            raise ValueError(f"release({i}): node {i} has no read in flight")

    def mark_down(self, index):
        """Take node ``index`` out of rotation; True if it was up."""
        cdef uint64_t bit = (<uint64_t>1) << self._index(index)
        cdef bint was_up
        with cython.critical_section(self):
            was_up = (self._up & bit) != 0
            self._up &= ~bit
        return was_up

    def mark_up(self, index):
        """Put node ``index`` back in rotation; True if it was down."""
        cdef uint64_t bit = (<uint64_t>1) << self._index(index)
        cdef bint was_down
        with cython.critical_section(self):
            was_down = (self._up & bit) == 0
            self._up |= bit
        return was_down

    def is_up(self, index):
        """Whether node ``index`` is in rotation."""
        return ((self._up >> self._index(index)) & 1) != 0

    def in_flight(self, index):
        """Reads currently in flight on node ``index``."""
        return self._in_flight[self._index(index)]

    def snapshot(self):
        """Consistent per-node counters: in flight, total picks, up."""
        cdef Py_ssize_t in_flight[_MAX]
        cdef Py_ssize_t picks[_MAX]
        cdef uint64_t up
        cdef int i
        with cython.critical_section(self):
            for i in range(self._n):
                in_flight[i] = self._in_flight[i]
                picks[i] = self._picks[i]
            up = self._up
        return [NodeStats(in_flight[i], picks[i], ((up >> i) & 1) != 0) for i in range(self._n)]

    def __repr__(self):
        return f"Selector(node_count={self._n}, strategy={self._strategy!r})"

    cdef int _index(self, object index) except -1:
        cdef long long i
        index = _exact_int(index, "node index must be an int")
        try:
            i = index
        except OverflowError:
            i = -1
        if not 0 <= i < self._n:
            raise IndexError(f"node index {index} out of range for {self._n} nodes")
        return <int>i

    @cython.boundscheck(True)  # user code runs between reads of ``eligible``
    cdef uint64_t _up_mask_of(self, object eligible) except? 0:
        cdef uint64_t mask = 0
        cdef bint fits = True
        cdef Py_ssize_t i, size
        cdef tuple items
        if isinstance(eligible, int) and type(eligible) is not bool:
            eligible = _exact_int(eligible, "")
            try:
                mask = eligible
            except OverflowError:
                fits = False
            if not fits or mask & ~self._all:
                raise ValueError(
                    f"eligible bitmask {eligible:#x} has bits outside the {self._n} nodes"
                )
            return mask
        if isinstance(eligible, (str, bytes)) or not isinstance(eligible, Sequence):
            raise TypeError(
                "eligible must be None, an int bitmask or a sequence of bools, "
                f"not {type(eligible).__name__}"
            )
        size = len(eligible)
        if size != self._n:
            raise ValueError(f"eligible has {size} entries for {self._n} nodes")
        # Every entry is read before any truth value is asked for: a __bool__
        # that changes ``eligible`` cannot make the loop read past its end.
        items = tuple([eligible[i] for i in range(self._n)])
        for i in range(self._n):
            if items[i]:
                mask |= (<uint64_t>1) << i
        return mask

    cdef inline int _below(self, int bound) noexcept:
        """A splitmix64 draw mapped to ``range(bound)`` (Lemire's multiply-shift)."""
        self._state += <uint64_t>0x9E3779B97F4A7C15
        cdef uint64_t z = self._state
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
        z ^= z >> 31
        return <int>(((z >> 32) * <uint64_t>bound) >> 32)
