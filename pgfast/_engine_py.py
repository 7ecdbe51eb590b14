"""Pipelined queries' hot path: results matched to statements, rows built (pure twin)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

import psycopg
from psycopg import pq

__all__ = ["column_names", "load_rows", "read_results"]

_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_COPY_IN = pq.ExecStatus.COPY_IN
_COPY_OUT = pq.ExecStatus.COPY_OUT
_COPY_BOTH = pq.ExecStatus.COPY_BOTH


def read_results(pgconn: Any, entries: deque[Any], finish: Callable[[Any], None]) -> None:
    """Match the results waiting on ``pgconn`` (in pipeline mode, input consumed) to
    ``entries``, the statements in flight oldest first, each sent with its own Sync.

    A statement's error (its first) goes to ``entry.error``, its last other
    result to ``entry.result``; when its Sync arrives it leaves ``entries``
    and ``finish(entry)`` is called. Stops when no complete result is waiting.
    """
    ended = False
    while entries and not pgconn.is_busy():
        res = pgconn.get_result()
        if res is None:
            if ended:
                break  # nothing more has arrived
            ended = True  # the end of one statement's results
            continue
        ended = False
        entry = entries[0]
        status = res.status
        if status == _PIPELINE_SYNC:
            entries.popleft()
            finish(entry)
        elif status == _FATAL_ERROR:
            if entry.error is None:
                entry.error = res
        elif status == _PIPELINE_ABORTED:
            pass
        elif status in (_COPY_IN, _COPY_OUT, _COPY_BOTH):
            raise psycopg.NotSupportedError(
                "COPY cannot be run by query(): use copy_in, or a dedicated connection"
            )
        else:
            entry.result = res


def column_names(result: Any, encoding: str) -> list[str]:
    """The result's column names, decoded."""
    fname = result.fname
    return [fname(i).decode(encoding) for i in range(result.nfields)]


def load_rows(tx: Any, result: Any, dicts: bool, encoding: str) -> list[Any]:
    """Every row of ``result`` (a ``psycopg.pq.PGresult`` of TUPLES_OK) through the
    psycopg ``Transformer`` ``tx``: dicts keyed by column name, or tuples."""
    tx.set_pgresult(result)
    ntuples = result.ntuples
    rows: list[Any] = tx.load_rows(0, ntuples, tuple)
    if not dicts or not rows:
        return rows
    names = column_names(result, encoding)
    if ntuples == 1:  # the common case, where building iterators costs more
        return [dict(zip(names, rows[0], strict=True))]
    return list(map(dict, map(zip, repeat(names), rows)))
