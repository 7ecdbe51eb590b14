"""The statement deadline watchdog behind ``query_timeout`` and interrupted statements."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psycopg
import pytest

from pgfast._deadline import arm, disarm
from pgfast._exceptions import QueryTimeoutError
from pgfast._factories import create_pool
from pgfast._sql import sql


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_deadline_remembers_what_it_did_once_disarmed(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        fired = arm(conn.pgconn, 0.0)
        _until(lambda: fired.fired)
        disarm(fired)
        assert fired.ended and fired.fired and not fired.severed
        _until(lambda: fired.delivered)  # an idle backend ignores it
        quiet = arm(conn.pgconn, 60.0)
        disarm(quiet)
        assert quiet.ended and not quiet.fired and not quiet.delivered
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_query_timeout_works_in_a_forked_child(pg_url: str) -> None:
    # The parent's watchdog thread is running; a child has none of its threads.
    with create_pool(pg_url, query_timeout=0.2) as db, pytest.raises(QueryTimeoutError):
        db.query(sql("SELECT pg_sleep(5)"))
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            with create_pool(pg_url, query_timeout=0.2) as db:
                started = time.monotonic()
                try:
                    db.query(sql("SELECT pg_sleep(5)"))
                except QueryTimeoutError:
                    code = 0 if time.monotonic() - started < 3 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child's query_timeout never fired")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
