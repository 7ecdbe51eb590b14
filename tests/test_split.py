"""pgfast.split: statements cut where PostgreSQL cuts them, each with its own parameters.

The unit tests run over both twins of ``sql`` (``impl``); the property tests
check that joining parts with ``;`` and splitting gives the parts back, and
the parity tests let a real server run a generated multi-statement text as
one simple query and compare each of its results with the split parts run on
their own.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import IMPLS, twin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgfast
from pgfast import sql
from pgfast._split import (
    has_several_statements,
    several_statements_error,
    split_with,
    statement_keyword,
)


def parts_of(impl: str, q: Any, scs: bool = True) -> list[tuple[str, list[Any]]]:
    return [p.format() for p in split_with(twin("_compose", impl).sql, q, scs)]


def texts(impl: str, text: str, scs: bool = True) -> list[str]:
    return [t for t, _ in parts_of(impl, twin("_compose", impl).sql.unsafe(text), scs)]


# (text, statements as split gives them)
CASES: list[tuple[str, list[str]]] = [
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("  SELECT 1 ;\n\n SELECT 2 ;  ", ["SELECT 1", "SELECT 2"]),
    (";;; SELECT 1;;", ["SELECT 1"]),
    ("SELECT ';' AS a; SELECT 'it''s;'", ["SELECT ';' AS a", "SELECT 'it''s;'"]),
    ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),  # standard strings
    ("SELECT E'a\\';'; SELECT 2", ["SELECT E'a\\';'", "SELECT 2"]),
    ("SELECT e'\\\\'; SELECT 2", ["SELECT e'\\\\'", "SELECT 2"]),
    ("SELECT E'a'\n'\\';'; SELECT 2", ["SELECT E'a'\n'\\';'", "SELECT 2"]),  # continued E''
    ("SELECT E'a' -- c\n  '\\';'; SELECT 2", ["SELECT E'a' -- c\n  '\\';'", "SELECT 2"]),
    ("SELECT B'01', X'1F'; SELECT N';'", ["SELECT B'01', X'1F'", "SELECT N';'"]),
    ("SELECT U&'d\\0061;'; SELECT 2", ["SELECT U&'d\\0061;'", "SELECT 2"]),
    ('SELECT 1 AS ";"; SELECT 1 AS """;"', ['SELECT 1 AS ";"', 'SELECT 1 AS """;"']),
    ('SELECT 1 AS U&";"; SELECT 2', ['SELECT 1 AS U&";"', "SELECT 2"]),
    ("SELECT 1 -- ;\n; SELECT 2", ["SELECT 1 -- ;", "SELECT 2"]),
    ("SELECT 1 /* ; /* ; */ ; */; SELECT 2", ["SELECT 1 /* ; /* ; */ ; */", "SELECT 2"]),
    ("SELECT 1; -- only a comment ;\n; /* another */", ["SELECT 1"]),
    ("SELECT $$;$$; SELECT $a$ $$;$$ $a$", ["SELECT $$;$$", "SELECT $a$ $$;$$ $a$"]),
    ("SELECT $a$ $ab$; $a$; SELECT 2", ["SELECT $a$ $ab$; $a$", "SELECT 2"]),
    ("SELECT a$b$c; SELECT 2", ["SELECT a$b$c", "SELECT 2"]),  # $ inside a name
    ("SELECT 1 x;SELECT 2", ["SELECT 1 x", "SELECT 2"]),
    (
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
        "INSERT INTO b VALUES (2)); SELECT 3",
        [
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); "
            "INSERT INTO b VALUES (2))",
            "SELECT 3",
        ],
    ),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
        "SELECT CASE WHEN true THEN 2 END; END; SELECT f()",
        [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
            "SELECT CASE WHEN true THEN 2 END; END",
            "SELECT f()",
        ],
    ),
    (
        "create or replace procedure p() language sql begin atomic insert into t "
        "values (1); end; call p()",
        [
            "create or replace procedure p() language sql begin atomic insert into t "
            "values (1); end",
            "call p()",
        ],
    ),
    # BEGIN outside a routine body is a transaction, not a block.
    ("BEGIN; SELECT 1; END", ["BEGIN", "SELECT 1", "END"]),
    (
        "SELECT CASE WHEN true THEN 1 END; SELECT 2",
        ["SELECT CASE WHEN true THEN 1 END", "SELECT 2"],
    ),
    ("", []),
    (" \n -- nothing\n /* at all */ ", []),
]


@pytest.mark.nodb
@pytest.mark.parametrize(("text", "expected"), CASES)
def test_split_cases(impl: str, text: str, expected: list[str]) -> None:
    assert texts(impl, text) == expected


@pytest.mark.nodb
def test_standard_conforming_strings_off(impl: str) -> None:
    text = "SELECT 'a\\';'; SELECT 2"
    assert texts(impl, text, scs=False) == ["SELECT 'a\\';'", "SELECT 2"]
    # With standard strings the backslash is a plain character: the last ' is unclosed.
    with pytest.raises(ValueError, match="unterminated string literal"):
        texts(impl, text)


@pytest.mark.nodb
def test_parameters_follow_their_statement(impl: str) -> None:
    s = twin("_compose", impl).sql
    q = s(
        "INSERT INTO t VALUES ({}, {}); SELECT {} AS ';', {}::text; ; DELETE FROM t WHERE id = {}",
        1,
        "a;b",
        None,
        [1, 2],
        {"k": "v"},
    )
    assert parts_of(impl, q) == [
        ("INSERT INTO t VALUES ($1, $2)", [1, "a;b"]),
        ("SELECT $1 AS ';', $2::text", [None, [1, 2]]),
        ("DELETE FROM t WHERE id = $1", [{"k": "v"}]),
    ]


@pytest.mark.nodb
def test_raw_parameter_references_resolve_like_the_server(impl: str) -> None:
    s = twin("_compose", impl).sql
    # The text says $1 twice: both are the same value, sent once per reference.
    q = s.unsafe("SELECT 1; SELECT $1 + $1 AS x") + s(" WHERE {} > 0", 5)
    assert q.format() == ("SELECT 1; SELECT $1 + $1 AS x WHERE $1 > 0", [5])
    assert parts_of(impl, q) == [("SELECT 1", []), ("SELECT $1 + $2 AS x WHERE $3 > 0", [5, 5, 5])]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1; SELECT 'abc", "unterminated string literal starting at line 1, column 18"),
        ("SELECT 1;\n SELECT E'\\'", "unterminated string literal starting at line 2, column 9"),
        ('SELECT 1 AS "x', "unterminated quoted identifier starting at line 1, column 13"),
        ("SELECT 1 /* /* */", "unterminated block comment starting at line 1, column 10"),
        ("SELECT $a$ x $b$", "unterminated dollar-quoted string starting at line 1, column 8"),
    ],
)
def test_unterminated_tokens_are_named(impl: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^pgfast\.split\(\): " + message.replace("(", r"\(")):
        texts(impl, text)


@pytest.mark.nodb
def test_parameters_nobody_refers_to(impl: str) -> None:
    s = twin("_compose", impl).sql
    with pytest.raises(ValueError, match=r"no statement refers to parameter \$2") as info:
        parts_of(impl, s("SELECT {}; SELECT '{}'", 1, "secret value"))
    assert "secret value" not in str(info.value)
    with pytest.raises(ValueError, match=r"refers to parameter \$3, but the query has 1"):
        parts_of(impl, s("SELECT {}", 1) + s.unsafe("; SELECT $3"))


@pytest.mark.nodb
def test_public_split() -> None:
    assert pgfast.split is not None and "split" in pgfast.__all__
    parts = pgfast.split(sql("SELECT {}; SELECT {}", 1, 2))
    assert [p.format() for p in parts] == [("SELECT $1", [1]), ("SELECT $1", [2])]
    assert all(pgfast.is_sql_query(p) for p in parts)
    with pytest.raises(TypeError, match=r"SQLQuery built with pgfast\.sql"):
        pgfast.split("SELECT 1; SELECT 2")  # type: ignore[arg-type]
    q = sql.unsafe("SELECT 'a\\'; SELECT 2'")
    assert len(pgfast.split(q, standard_conforming_strings=False)) == 1
    assert len(pgfast.split(sql.unsafe("SELECT 'a\\'; SELECT 2"))) == 2


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("text", "several"),
    [
        ("SELECT $1", False),
        ("SELECT $1;", False),
        ("SELECT $1; -- done", False),
        ("SELECT $1;;  ;", False),
        ("SELECT ';' || $1", False),
        ("SELECT $1; SELECT 2", True),
        ("SELECT $1;SELECT 2;", True),
        ("SELECT $$;$$, $1 /* ; */", False),
        ("CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT $1)", False),
        ("SELECT 'unterminated; SELECT 2", False),  # the server reports it
    ],
)
def test_has_several_statements(text: str, several: bool) -> None:
    assert has_several_statements(text) is several


@pytest.mark.nodb
def test_several_statements_error_names_split() -> None:
    error = several_statements_error()
    assert isinstance(error, ValueError)
    assert "pgfast.split(q)" in str(error) and "several statements" in str(error)


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("SELECT 1", "SELECT"),
        ("  -- c\n /* d /* e */ */ (select 1) UNION (select 2)", "SELECT"),
        ("with x as (select 1) select * from x", "WITH"),
        ("insert into t values (1)", "INSERT"),
        ("", None),
        ("$1", None),
        ('"select"', None),
        ("select1x", None),
        ("sélect 1", None),
    ],
)
def test_statement_keyword(text: str, keyword: str | None) -> None:
    assert statement_keyword(text) == keyword


# -- properties -------------------------------------------------------------------------------

CHARS = list("ab ;'\"\\$-*/\n")
chunk = st.text(alphabet=st.sampled_from(CHARS), max_size=8)
words = st.sampled_from(["SELECT", "x", "FROM", "t1", "AND", "1", "2.5", "=", "+", ","])


def _dollar(body: str, tag: str) -> str | None:
    quoted = f"${tag}${body}${tag}$"
    return quoted if quoted.find(f"${tag}$", len(tag) + 2) == len(tag) + 2 + len(body) else None


@st.composite
def token(draw: st.DrawFn) -> str:
    """One token whose ``;`` characters (if any) are hidden from the splitter."""
    kind = draw(st.integers(0, 8))
    body = draw(chunk)
    if kind == 0:
        return "'" + body.replace("'", "''") + "'"
    if kind == 1:
        return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == 2:
        quoted = _dollar(body, draw(st.sampled_from(["", "q", "x_1"])))
        return quoted if quoted is not None else "$$$$"
    if kind == 3:
        return '"' + (body or "n").replace('"', '""') + '"'
    if kind == 4:
        return "/* " + body.replace("*", "").replace("/", "") + " /* ; */ */"
    if kind == 5:
        return "-- " + body.replace("\n", " ") + "\n"
    if kind == 6:
        return "(SELECT 1; x)"  # psql does not end a statement inside parentheses
    return draw(words)


@st.composite
def statement(draw: st.DrawFn) -> tuple[list[str], list[Any]]:
    """A statement as alternating text pieces and parameter values (one more piece)."""
    first = draw(words)
    tokens = [first, *draw(st.lists(st.one_of(token(), st.just(None)), max_size=6))]
    last = draw(words)  # no trailing comment: it would swallow the separator
    pieces = [""]
    values: list[Any] = []
    for tok in [*tokens, last]:
        if tok is None:
            values.append(draw(st.one_of(st.integers(), st.text(max_size=4), st.none())))
            pieces[-1] += " "
            pieces.append(" ")
        else:
            pieces[-1] += tok + ("" if tok.endswith("\n") else " ")
    pieces[-1] = pieces[-1].rstrip(" ")
    return pieces, values


def build(s: Any, pieces: list[str], values: list[Any]) -> Any:
    items = [s.unsafe(pieces[0])]
    for value, text in zip(values, pieces[1:], strict=True):
        items += [s.value(value), s.unsafe(text)]
    return s.join(items, "")


separators = st.sampled_from([";", " ; ", ";\n", ";;", "; ;\n", "\n;\t"])


@pytest.mark.nodb
@settings(max_examples=300, deadline=None)
@given(statements=st.lists(statement(), min_size=1, max_size=4), separator=separators)
def test_split_of_joined_parts_gives_the_parts(
    statements: list[tuple[list[str], list[Any]]], separator: str
) -> None:
    for impl_name in IMPLS:
        s = twin("_compose", impl_name).sql
        parts = [build(s, pieces, values) for pieces, values in statements]
        joined = s.join(parts, s.unsafe(separator))
        got = split_with(s, joined)
        assert got == parts
        for part, (_, values) in zip(got, statements, strict=True):
            assert part.format()[1] == values
        text = joined.format()[0]
        assert has_several_statements(text) is (len(parts) > 1)
        assert has_several_statements(text + separator + "\n") is (len(parts) > 1)


# -- parity with PostgreSQL -----------------------------------------------------------------

SAFE = list("ab ;'\"\\$-*/\nxé")
value_text = st.text(alphabet=st.sampled_from(SAFE), max_size=10)


@st.composite
def literal(draw: st.DrawFn) -> tuple[str, str]:
    """SQL text of a string literal and the value PostgreSQL reads from it."""
    value = draw(value_text)
    kind = draw(st.integers(0, 3))
    if kind == 1:
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'", value
    if kind == 2:
        quoted = _dollar(value, draw(st.sampled_from(["", "t", "a_b"])))
        if quoted is not None:
            return quoted, value
    if kind == 3:  # a literal continued on the next line, after a comment
        cut = draw(st.integers(0, len(value)))
        a, b = value[:cut].replace("'", "''"), value[cut:].replace("'", "''")
        return f"'{a}' -- ;'\n  '{b}'", value
    return "'" + value.replace("'", "''") + "'", value


@st.composite
def select_text(draw: st.DrawFn) -> str:
    text, _ = draw(literal())
    alias = draw(st.text(alphabet=st.sampled_from(SAFE), min_size=1, max_size=6))
    comment = draw(st.sampled_from(["", " /* ; /* ; */ ' */ ", " -- ;'\n "]))
    return f"SELECT{comment} {text}::text AS " + '"' + alias.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def raw_conn(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        yield conn


def _results(cur: Any) -> list[Any]:
    results = [cur.fetchall() if cur.description else None]
    while cur.nextset():
        results.append(cur.fetchall() if cur.description else None)
    return results


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    statements=st.lists(select_text(), min_size=1, max_size=4),
    separator=st.sampled_from([";", ";\n", "; ; ", "; -- x;'\n;"]),
)
def test_parity_with_the_server(raw_conn: Any, statements: list[str], separator: str) -> None:
    """The server's own split of a simple query matches pgfast.split, result for result."""
    text = separator.join(statements)
    with raw_conn.cursor() as cur:
        cur.execute(text)
        server = _results(cur)
        parts = pgfast.split(sql.unsafe(text))
        assert len(parts) == len(server) == len(statements)
        for part, expected in zip(parts, server, strict=True):
            cur.execute(*part.format())
            assert cur.fetchall() == expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.lists(st.tuples(select_text(), st.lists(value_text, max_size=3)), max_size=4),
)
def test_parts_run_with_their_parameters(raw_conn: Any, items: list[tuple[str, list[str]]]) -> None:
    """Each part runs on the server with its own parameters, in their order."""
    queries = []
    for text, values in items:
        fields = "".join(", {}::text" for _ in values)
        queries.append(sql(text.replace("{", "{{").replace("}", "}}") + fields, *values))  # type: ignore[arg-type]
    q = sql.join(queries, ";")
    parts = pgfast.split(q)
    assert len(parts) == len(items)
    with raw_conn.cursor() as cur:
        for part, (text, values) in zip(parts, items, strict=True):
            cur.execute(*part.format())
            row = cur.fetchone()
            assert list(row[1:]) == values
            cur.execute(text)
            assert row[0] == cur.fetchone()[0]


def test_standard_conforming_strings_off_on_the_server(raw_conn: Any) -> None:
    text = "SELECT 'a\\';' AS v; SELECT 'b' AS v"
    with raw_conn.cursor() as cur:
        cur.execute("SET standard_conforming_strings = off; SET escape_string_warning = off")
        try:
            cur.execute(text)
            server = _results(cur)
            parts = pgfast.split(sql.unsafe(text), standard_conforming_strings=False)
            assert [cur.execute(*p.format()).fetchall() for p in parts] == server
            assert server == [[("a';",)], [("b",)]]
        finally:
            cur.execute("RESET standard_conforming_strings; RESET escape_string_warning")


def test_routine_bodies_and_rules_on_the_server(raw_conn: Any) -> None:
    text = (
        "DROP TABLE IF EXISTS split_t CASCADE; CREATE TABLE split_t (id int);"
        "CREATE OR REPLACE FUNCTION split_f() RETURNS int LANGUAGE sql BEGIN ATOMIC "
        "INSERT INTO split_t VALUES (1); SELECT CASE WHEN true THEN 2 END; END;"
        "CREATE RULE split_r AS ON UPDATE TO split_t DO INSTEAD (SELECT 1; SELECT 2);"
        "SELECT split_f() AS v; SELECT count(*)::int AS n FROM split_t;"
        "DROP FUNCTION split_f(); DROP TABLE split_t"
    )
    with raw_conn.cursor() as cur:
        cur.execute(text)
        server = _results(cur)
        parts = pgfast.split(sql.unsafe(text))
        assert len(parts) == len(server) == 8
        # The text dropped what it created: running the parts in order does it again.
        mine = []
        for part in parts:
            cur.execute(*part.format())
            mine.append(cur.fetchall() if cur.description else None)
        assert mine == server
        assert server[4:6] == [[(2,)], [(1,)]]


# -- on pools -----------------------------------------------------------------------------


def test_split_queries_run_in_one_transaction(pg_url: str) -> None:
    q = sql(
        "DROP TABLE IF EXISTS split_tx; CREATE TABLE split_tx (id int PRIMARY KEY, v text);"
        "INSERT INTO split_tx VALUES ({}, {}); SELECT v FROM split_tx WHERE id = {}",
        1,
        "a;b",
        1,
    )
    with pgfast.create_pool(pg_url) as db:
        results = db.query(pgfast.split(q))
        assert results[-1] == [{"v": "a;b"}]
        bad = sql(
            "INSERT INTO split_tx VALUES ({}, 'x'); INSERT INTO split_tx VALUES ({}, 'y')", 2, 1
        )
        with pytest.raises(pgfast.errors.UniqueViolation):
            db.query(pgfast.split(bad))
        assert db.query_value(sql("SELECT count(*) FROM split_tx")) == 1  # rolled back
        db.execute(sql("DROP TABLE split_tx"))


def test_several_statements_with_parameters_is_a_value_error(pg_url: str) -> None:
    """Needs the pool to call has_several_statements before sending (see the report)."""
    with pgfast.create_pool(pg_url) as db:
        with pytest.raises(ValueError, match=r"pgfast\.split\(q\)"):
            db.query(sql("SELECT {}::int; SELECT 2", 1))
        # Without parameters several statements run as one simple query.
        assert db.query(sql("SELECT 1 AS a; SELECT 2 AS b")) == [{"b": 2}]
