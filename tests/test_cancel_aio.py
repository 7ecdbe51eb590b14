"""Cancelling a task whose query sits on a stalled link blocks nothing.

libpq before 17 only has the blocking ``PQcancel``, which psycopg's C build
calls holding the GIL: on a stalled link the whole interpreter froze. The
scenario runs in a child process, so that a freeze fails the test by its
timeout instead of hanging the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCENARIO = r"""
import asyncio, json, sys, threading, time
from pgfast import create_async_pool, sql
from pgfast.testing import FaultProxy


def widest_gap(ticks):
    return max(b - a for a, b in zip(ticks, ticks[1:]))


async def main(url):
    with FaultProxy.for_url(url) as proxy:
        async with create_async_pool(proxy.url_for(url), pool_size=1) as db:
            assert await db.query_value(sql("SELECT {}::int", 1)) == 1
            thread_ticks, loop_ticks, stop = [], [], threading.Event()

            def thread_ticker():
                while not stop.is_set():
                    thread_ticks.append(time.monotonic())
                    time.sleep(0.05)

            async def loop_ticker():
                while True:
                    loop_ticks.append(time.monotonic())
                    await asyncio.sleep(0.05)

            ticking = threading.Thread(target=thread_ticker)
            ticking.start()
            ticker = asyncio.create_task(loop_ticker())
            proxy.stall()
            query = asyncio.create_task(db.query_value(sql("SELECT {}::int", 2)))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            query.cancel()
            try:
                await query
            except asyncio.CancelledError:
                pass
            cancelled_in = time.monotonic() - started
            await asyncio.sleep(1.2)  # go on ticking after the cancel
            ticker.cancel()
            stop.set()
            ticking.join()
            proxy.resume()
            value = await db.query_value(sql("SELECT {}::int", 3))
    print(json.dumps({
        "thread_gap": widest_gap(thread_ticks),
        "loop_gap": widest_gap(loop_ticks),
        "cancelled_in": cancelled_in,
        "value": value,
    }))


asyncio.run(main(sys.argv[1]))
"""


def test_cancel_on_a_stalled_link_blocks_no_thread_and_no_event_loop(pg_url: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", SCENARIO, pg_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    # 50 ms ticks; a blocked GIL or loop would stop them for the whole stall.
    assert seen["thread_gap"] < 1.0, seen
    assert seen["loop_gap"] < 1.0, seen
    # Not left waiting on the dead link: cut a second after the cancel.
    assert seen["cancelled_in"] < 5.0, seen
    assert seen["value"] == 3
