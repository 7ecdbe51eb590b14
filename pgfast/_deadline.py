"""Client-side statement deadlines (``query_timeout``), for sync and async pools alike.

One daemon thread watches every armed deadline. When one passes, it asks the
server to cancel the statement (without blocking anything, see ``_cancel``);
when the statement has still not ended one second later, the link is taken
to be stalled and is cut (``_sever``), so the waiting caller wakes up with a
connection error. The caller turns either outcome into ``QueryTimeoutError``.

Arming costs a lock and a heap push; nothing runs when ``query_timeout`` is
not set.
"""

from __future__ import annotations

import heapq
import os
import threading
from itertools import count
from time import monotonic
from typing import Any

from ._cancel import request_cancel
from ._sever import sever

# How long the server has to confirm a cancel before the link counts as stalled.
CONFIRM_WITHIN = 1.0
_ARMED, _CANCELLED, _SEVERED = 0, 1, 2


class Deadline:
    """One statement's deadline: ``fired`` once the cancel was sent, ``severed``
    once the link was cut, ``ended`` once disarmed (what it did stays known)."""

    __slots__ = ("cancel_sent", "ended", "pgconn", "state")

    def __init__(self, pgconn: Any) -> None:
        self.pgconn = pgconn
        self.state = _ARMED
        self.ended = False
        self.cancel_sent: threading.Event | None = None

    def snapshot(self) -> Deadline:
        """A copy frozen in the current state, which disarming the original leaves alone."""
        copy = Deadline(self.pgconn)
        copy.state = self.state
        copy.cancel_sent = self.cancel_sent
        return copy

    @property
    def delivered(self) -> bool:
        """The server took the cancel request: it can no longer hit a later statement.

        A backend waiting for a command ignores a cancel; one that was still
        on its way could stop whatever runs next on the connection.
        """
        return self.cancel_sent is not None and self.cancel_sent.is_set()

    @property
    def fired(self) -> bool:
        return self.state in (_CANCELLED, _SEVERED)

    @property
    def severed(self) -> bool:
        return self.state == _SEVERED


class _Watchdog:
    def __init__(self) -> None:
        self._reset()
        # A forked child has none of the parent's threads, and the lock may
        # have been held at the fork: it starts afresh.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live = 0
        self._order = count()
        self._thread: threading.Thread | None = None

    def arm(self, pgconn: Any, seconds: float) -> Deadline:
        deadline = Deadline(pgconn)
        when = monotonic() + seconds
        with self._cond:
            heap = self._heap
            # Ended deadlines stay in the heap until they expire: drop them in
            # bulk when they outnumber the live ones.
            if len(heap) > 64 and len(heap) > 4 * self._live:
                heap[:] = [entry for entry in heap if not entry[2].ended]
                heapq.heapify(heap)
            heapq.heappush(heap, (when, next(self._order), deadline))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pgfast-deadlines", daemon=True
                )
                self._thread.start()
            elif heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def disarm(self, deadline: Deadline) -> None:
        """The statement ended: the deadline no longer acts on its connection."""
        with self._cond:
            if not deadline.ended:
                deadline.ended = True
                self._live -= 1

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                while True:
                    if not heap:
                        self._cond.wait()
                        continue
                    when, _, deadline = heap[0]
                    delay = when - monotonic()
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                    heapq.heappop(heap)
                    if deadline.ended:
                        continue
                    break
                # Acting under the lock keeps ``disarm`` from returning while
                # the connection is touched; neither action blocks.
                if deadline.state == _ARMED:
                    deadline.state = _CANCELLED
                    heapq.heappush(heap, (when + CONFIRM_WITHIN, next(self._order), deadline))
                    deadline.cancel_sent = request_cancel(deadline.pgconn)
                else:
                    # Still running a second after the cancel: a stalled link.
                    deadline.state = _SEVERED
                    sever(deadline.pgconn)


_watchdog = _Watchdog()
arm = _watchdog.arm
disarm = _watchdog.disarm
