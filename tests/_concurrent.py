"""Test workers running at once (tasks for the async tests, threads for their sync
twins), and blocking calls that let them run.

The generated sync tests call ``each_sync`` where the async source calls
``each_async`` (tools/async_to_sync.py renames ``_async`` names).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


async def each_async(count: int, worker: Callable[[int], Awaitable[T]]) -> list[T]:
    """``worker(0)`` .. ``worker(count - 1)`` as concurrent tasks; their results in order."""
    return list(await asyncio.gather(*(worker(i) for i in range(count))))


def each_sync(count: int, worker: Callable[[int], T]) -> list[T]:
    """``worker(0)`` .. ``worker(count - 1)`` in concurrent threads; their results in order."""
    with ThreadPoolExecutor(max_workers=count) as threads:
        return list(threads.map(worker, range(count)))


async def call_blocking_async(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own: the event loop (and the tasks of the test) run
    meanwhile."""
    return await asyncio.to_thread(fn, *args)


def call_blocking_sync(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: the other threads of the test run meanwhile."""
    return fn(*args)
