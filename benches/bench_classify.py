"""Read/write classifier: compiled vs pure vs the JS anchor's regular expression.

The anchor (``@databases/pg-cluster``) searches the text for one regex of
write keywords: it does not lex, so it misroutes MERGE, COPY, CALL, DO, LOCK,
``nextval()`` and ``SELECT ... INTO``; it is here as a speed reference only.
Compare within a group: ``--benchmark-group-by=group``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pgfast import _classify_py

try:
    from pgfast import _classify_c
except ImportError:  # pure-only install: the compiled rows are skipped
    _classify_c = None  # type: ignore[assignment]

pytestmark = pytest.mark.nodb

_ANCHOR = re.compile(r"\b(alter|create|delete|drop|insert|truncate|update|vacuum)\b", re.I)


def anchor_is_read_only(text: str) -> bool:
    return _ANCHOR.search(text) is None


# A realistic ~1 KB read: CTE, joins, comments, literals, parameters, calls.
READ_1KB = """-- dashboard: recent orders per customer
WITH recent AS (
    SELECT o.id, o.customer_id, o.total, o.created_at, o.status
    FROM orders AS o
    WHERE o.created_at > now() - interval '30 days'
      AND o.status = ANY($1::text[])  /* 'paid', 'shipped' */
), ranked AS (
    SELECT r.*, row_number() OVER (PARTITION BY r.customer_id ORDER BY r.created_at DESC) AS rn
    FROM recent AS r
)
SELECT c.id, c.name, c.email, "c"."Tier" AS tier,
       coalesce(sum(ra.total), 0) AS total_30d,
       count(*) FILTER (WHERE ra.status = 'shipped') AS shipped,
       max(ra.created_at) AS last_order,
       jsonb_build_object('id', c.id, 'name', c.name, 'note', E'it\\'s fine') AS doc,
       $tag$ text with 'quotes' and -- dashes $tag$ AS lit
FROM customers AS c
LEFT JOIN ranked AS ra ON ra.customer_id = c.id AND ra.rn <= $2
WHERE c.org_id = $3 AND lower(c.email) LIKE $4 || '%'
GROUP BY c.id, c.name, c.email, "c"."Tier"
HAVING count(*) > $5
ORDER BY total_30d DESC, c.name
LIMIT $6 OFFSET $7
"""
assert 950 <= len(READ_1KB) <= 1100, len(READ_1KB)
assert _classify_py.is_read_only(READ_1KB) is True

SHORT = "SELECT * FROM users WHERE id = $1"

IMPLS: dict[str, Callable[[str], bool] | None] = {
    "cython": _classify_c.is_read_only if _classify_c is not None else None,
    "python": _classify_py.is_read_only,
    "anchor-regex": anchor_is_read_only,
}


TEXTS = {"classify-1kb-read": READ_1KB, "classify-short": SHORT}


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("group", list(TEXTS))
def test_classify(benchmark: BenchmarkFixture, name: str, group: str) -> None:
    fn = IMPLS[name]
    if fn is None:
        pytest.skip("compiled twin not built")
    benchmark.group = group
    assert benchmark(fn, TEXTS[group]) is True
