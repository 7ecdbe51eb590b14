"""The per-result hot path of pipelined queries: a PGresult's rows, dicts or tuples (pure twin)."""

from __future__ import annotations

from itertools import repeat
from typing import Any

__all__ = ["column_names", "load_rows"]


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
