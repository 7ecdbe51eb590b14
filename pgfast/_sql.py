"""``pgfast.sql``: the public face of the ``_compose`` hot path chosen by ``pgfast._impl``.

Re-exported by ``pgfast``: ``sql``, ``SQLQuery`` and ``is_sql_query``. Type
checkers see the pure twin's types; at run time these are the objects of the
implementation picked once in ``pgfast._impl`` (compiled or pure, never mixed).

``SQLQuery.__repr__`` shows the SQL text with its ``$n`` placeholders and the
number of parameters, never the parameter values, so queries are safe to log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._impl import compose as _compose

if TYPE_CHECKING:
    from ._compose_py import SQLBuilder, SQLQuery, is_sql_query

    sql: SQLBuilder
else:
    sql = _compose.sql
    SQLQuery = _compose.SQLQuery
    is_sql_query = _compose.is_sql_query

__all__ = ["SQLQuery", "is_sql_query", "sql"]
