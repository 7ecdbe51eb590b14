"""The sans-IO bulk planner (``pgfast._bulk_plan``): its SQL and parameters, then real runs."""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import math
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.errors import UndefinedTable

from pgfast import _bulk_plan
from pgfast._sql import SQLQuery, sql

TYPES = {"id": "int8", "name": "text"}


def texts(
    plan: _bulk_plan.BulkPlan, info: _bulk_plan.TableInfo | None = None
) -> list[tuple[str, list[Any]]]:
    """Each batch's SQL and parameters, binary arrays as their bytes."""
    return [(text, _plain(params)) for text, params in (q.format() for q in plan.queries(info))]


def _plain(params: list[Any]) -> list[Any]:
    return [p.data if isinstance(p, _bulk_plan.BinaryArray) else p for p in params]


# (type OID, struct code) of the binary array elements, written independently of _flatten.
ELEMENTS = {"bool": (16, "?"), "int2": (21, "h"), "int4": (23, "i"), "int8": (20, "q")}
ELEMENTS["float8"] = (701, "d")


def binary(element: str, *values: Any) -> bytes:
    """The binary (``array_send``) form of a one-dimensional array of ``values``."""
    oid, code = ELEMENTS[element]
    if not values:
        return struct.pack("!iii", 0, 0, oid)
    out = struct.pack("!iiiii", 1, None in values, oid, len(values), 1)
    for value in values:
        out += (
            struct.pack("!i", -1)
            if value is None
            else struct.pack("!i" + code, struct.calcsize("!" + code), value)
        )
    return out


# --- names and types (no server) ----------------------------------------------------------


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("table", "parts"),
    [
        ("users", ("users",)),
        ("app.users", ("app", "users")),
        ("Users", ("Users",)),
        (sql.ident("odd.name"), ("odd.name",)),
        (sql.ident("My Schema", 'say "hi"'), ("My Schema", 'say "hi"')),
    ],
)
def test_parse_table(table: str | SQLQuery, parts: tuple[str, ...]) -> None:
    parsed = _bulk_plan.parse_table(table)
    assert parsed.parts == parts
    assert parsed.ident == sql.ident(*parts)


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("a.b.c", ValueError),
        ("", ValueError),
        ("app.", ValueError),
        ("x" * 64, ValueError),
        (5, TypeError),
        (sql("SELECT 1"), ValueError),
        (sql("{}", "users"), ValueError),
        (sql.ident("a", "b", "c"), ValueError),
    ],
)
def test_parse_table_rejects(table: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"table|identifier"):
        _bulk_plan.parse_table(table)


@pytest.mark.nodb
@pytest.mark.parametrize(
    "type_name",
    [
        "int8",
        "text[]",
        "numeric(10,2)",
        "numeric(10, 2)[]",
        "timestamptz",
        "timestamp(3) with time zone",
        "character varying(20)",
        "double precision",
        "int[][]",
        "integer ARRAY",
        '"MyType"',
        "app.mood",
        '"odd ""quoted"" type"[]',
    ],
)
def test_check_type_accepts(type_name: str) -> None:
    assert _bulk_plan.check_type("col", type_name) == type_name


@pytest.mark.nodb
@pytest.mark.parametrize(
    "type_name",
    [
        "int8; DROP TABLE users",
        "text)--",
        "int8[] /* x */",
        "text' || 'x",
        '"unterminated',
        "",
        "numeric(10,2",
        "a.b.c",
    ],
)
def test_check_type_rejects(type_name: str) -> None:
    with pytest.raises(ValueError, match="column 'col' has an invalid type name"):
        _bulk_plan.check_type("col", type_name)
    with pytest.raises(ValueError, match="'col'"):
        _bulk_plan.plan_insert("t", [{"col": 1}], column_types={"col": type_name})


@pytest.mark.nodb
def test_check_type_needs_str() -> None:
    with pytest.raises(TypeError, match="column 'col' must be a str"):
        _bulk_plan.check_type("col", 20)


# --- bulk_insert (no server) ----------------------------------------------------------------


@pytest.mark.nodb
def test_insert_sql_and_params() -> None:
    plan = _bulk_plan.plan_insert(
        "app.users", [{"id": 1, "name": "a"}, {"id": 2}], column_types=TYPES
    )
    assert not plan.needs_types
    assert not plan.returns_rows
    assert texts(plan) == [
        (
            'INSERT INTO "app"."users" ("id", "name") '
            "SELECT unnest($1::int8[]), unnest($2::text[])",
            [binary("int8", 1, 2), '{"a",NULL}'],
        )
    ]


@pytest.mark.nodb
def test_insert_tuples_with_columns_and_returning() -> None:
    plan = _bulk_plan.plan_insert(
        "users",
        [(1, "a"), (2, "b")],
        columns=["id", "name"],
        column_types=TYPES,
        returning=["id"],
    )
    assert plan.returns_rows
    [(text, params)] = texts(plan)
    assert text.endswith(' RETURNING "id"')
    assert params == [binary("int8", 1, 2), '{"a","b"}']
    plan = _bulk_plan.plan_insert(
        "users", [(1,)], columns=["id"], column_types=TYPES, returning=sql("*")
    )
    assert texts(plan)[0][0].endswith(" RETURNING *")


@pytest.mark.nodb
def test_insert_unknown_key_is_rejected_when_planning() -> None:
    with pytest.raises(ValueError, match="record 1 has key 'nmae'"):
        _bulk_plan.plan_insert("users", [{"id": 1, "name": "a"}, {"id": 2, "nmae": "b"}])
    with pytest.raises(ValueError, match="record 0 has key 'name'"):
        _bulk_plan.plan_insert("users", [{"id": 1, "name": "a"}], columns=["id"])


@pytest.mark.nodb
def test_insert_batches() -> None:
    records = [{"id": i, "name": str(i)} for i in range(5)]
    plan = _bulk_plan.plan_insert("users", records, column_types=TYPES, batch_rows=2)
    assert [params for _, params in texts(plan)] == [
        [binary("int8", 0, 1), '{"0","1"}'],
        [binary("int8", 2, 3), '{"2","3"}'],
        [binary("int8", 4), '{"4"}'],
    ]
    plan = _bulk_plan.plan_insert("users", records, column_types=TYPES, batch_bytes=40)
    assert len(plan.queries()) == 3  # 17 bytes a row: 2 per batch


@pytest.mark.nodb
def test_insert_nothing() -> None:
    plan = _bulk_plan.plan_insert("users", [])
    assert not plan.needs_types
    assert plan.queries() == []
    with pytest.raises(ValueError, match="no columns to insert"):
        _bulk_plan.plan_insert("users", [{}])


@pytest.mark.nodb
def test_array_and_json_columns_travel_as_text() -> None:
    plan = _bulk_plan.plan_insert(
        "t",
        [{"id": 1, "tags": ["a"], "doc": [1]}, {"id": 2}, {"id": 3, "tags": [], "doc": "text"}],
        column_types={"id": "int8", "tags": "text[]", "doc": "jsonb"},
    )
    [(text, params)] = texts(plan)
    assert text == (
        'INSERT INTO "t" ("id", "tags", "doc") SELECT unnest($1::int8[]), '
        "unnest($2::text[])::text[], unnest($3::text[])::jsonb"
    )
    # Each value's own literal (or JSON text) is one element of a text[] literal.
    assert params == [binary("int8", 1, 2, 3), r'{"{\"a\"}",NULL,"{}"}', r'{"[1]",NULL,"\"text\""}']


@pytest.mark.nodb
def test_common_types_are_written_as_literals() -> None:
    plan = _bulk_plan.plan_insert(
        "t",
        [
            {"n": Decimal("1.50"), "u": uuid.UUID(int=1), "b": b"\x01", "f": 0.1, "s": 'a"\\'},
            {"n": None, "u": None, "b": None, "f": float("inf"), "s": ""},
        ],
        column_types={"n": "numeric", "u": "uuid", "b": "bytea", "f": "float8", "s": "text"},
    )
    assert texts(plan)[0][1] == [
        '{"1.50",NULL}',
        '{"00000000-0000-0000-0000-000000000001",NULL}',
        r'{"\\x01",NULL}',
        binary("float8", 0.1, float("inf")),
        r'{"a\"\\",""}',
    ]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("type_name", "value", "element"),
    [
        ("bool", True, "bool"),
        ("BOOLEAN", False, "bool"),
        ("int2", 7, "int2"),
        ("smallint", -7, "int2"),
        ("int4", 7, "int4"),
        ("integer", 7, "int4"),
        ("INT", 7, "int4"),
        ("bigint", 7, "int8"),
        ("float8", 0.5, "float8"),
        ("double  precision", 2, "float8"),
    ],
)
def test_binary_columns(type_name: str, value: Any, element: str) -> None:
    plan = _bulk_plan.plan_insert("t", [{"v": value}, {"v": None}], column_types={"v": type_name})
    [(text, params)] = texts(plan)
    assert text == f'INSERT INTO "t" ("v") SELECT unnest($1::{type_name}[])'
    assert params == [binary(element, value, None)]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("type_name", "values", "literal"),
    [
        ("int4", [1, 2**31], "{1,2147483648}"),  # out of range: the server says so
        ("int2", [1, "2"], '{1,"2"}'),
        ("int8", [1.5], "{1.5}"),
        ("bool", [1, True], "{1,t}"),
        ("float8", [10**20, "nan"], '{100000000000000000000,"nan"}'),
        ("float4", [0.5], "{0.5}"),  # float4 rounding stays the server's
        ("numeric", [1], "{1}"),
        ("my_domain", [1], "{1}"),
    ],
)
def test_values_that_do_not_fit_travel_as_text(
    type_name: str, values: list[Any], literal: str
) -> None:
    plan = _bulk_plan.plan_insert("t", [{"v": v} for v in values], column_types={"v": type_name})
    assert texts(plan)[0][1] == [literal]


@pytest.mark.nodb
def test_binary_parameter_repr() -> None:
    [query] = _bulk_plan.plan_insert("t", [{"v": 1}], column_types={"v": "int8"}).queries()
    assert repr(query.format()[1][0]) == "<int8[] in binary, 32 bytes>"


class Mood(enum.Enum):
    HAPPY = "happy"


@pytest.mark.nodb
def test_other_types_are_left_to_psycopg() -> None:
    plan = _bulk_plan.plan_insert("t", [{"m": Mood.HAPPY}, {"m": None}], column_types={"m": "text"})
    assert texts(plan)[0][1] == [[Mood.HAPPY, None]]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "expected a list, not str"), ([object()], "cannot send a object")],
)
def test_array_column_bad_value(value: Any, message: str) -> None:
    plan = _bulk_plan.plan_insert("t", [{"a": [1]}, {"a": value}], column_types={"a": "text[]"})
    with pytest.raises(TypeError, match=rf"record 1, column 'a' \(text\[\]\): {message}"):
        plan.queries()


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("given", "cast"),
    [
        ("varchar(5)", "varchar"),
        ("character varying(5)[]", "character varying[]"),
        ("char(2)", "bpchar"),  # a bare ``char`` would be char(1)
        ("character(2) ARRAY", "bpchar ARRAY"),
        ("char", "bpchar"),
        ("national character(3)", "bpchar"),
        ('"char"', '"char"'),  # the one-byte type, not character
        ("bit(3)[]", '"bit"[]'),
        ("bit varying(3)", "bit varying"),
        ("numeric(10, 2)", "numeric"),
        ("Numeric(10)[][]", "Numeric[][]"),
        ("timestamp(3) with time zone", "timestamp with time zone"),
        ("interval day to second(3)", "interval"),
        ("float(24)", "real"),
        ("float(53)[]", "double precision[]"),
        ("float(54)", "float(54)"),  # out of range: the server says so
        ('app."My(1)Type"', 'app."My(1)Type"'),
        ("text", "text"),
    ],
)
def test_given_types_lose_their_modifiers(given: str, cast: str) -> None:
    # A cast applies a modifier by truncating or rounding; the column enforces it instead.
    plan = _bulk_plan.plan_insert("t", [{"a": None}], column_types={"a": given})
    ((text, _),) = texts(plan)
    # Array columns travel as text[] of literals, cast back per row.
    unnest = f"$1::text[])::{cast}" if cast.endswith(("]", "ARRAY")) else f"$1::{cast}[])"
    assert text == f'INSERT INTO "t" ("a") SELECT unnest({unnest}'


@pytest.mark.nodb
def test_types_looked_up_and_merged() -> None:
    plan = _bulk_plan.plan_insert(
        "users", [{"id": 1, "name": "a"}], column_types={"name": "varchar"}
    )
    assert plan.needs_types
    with pytest.raises(ValueError, match="no type for column\\(s\\) 'id': pass them"):
        plan.queries()
    info = _bulk_plan.table_info(
        _bulk_plan.parse_table("users"),
        [
            {"attname": "id", "type": "bigint", "oid": 20},
            {"attname": "name", "type": "text", "oid": 25},
        ],
    )
    assert info.columns == ("id", "name")
    assert texts(plan, info) == [
        (
            'INSERT INTO "users" ("id", "name") SELECT unnest($1::bigint[]), unnest($2::varchar[])',
            [binary("int8", 1), '{"a"}'],
        )
    ]
    missing = _bulk_plan.table_info(_bulk_plan.parse_table("users"), [("name", "text", 25)])
    with pytest.raises(ValueError, match="'id': table \"users\" has no such column"):
        plan.queries(missing)


@pytest.mark.nodb
def test_table_info_missing_table() -> None:
    with pytest.raises(UndefinedTable, match=r'table "app"\."nope" does not exist'):
        _bulk_plan.table_info(_bulk_plan.parse_table("app.nope"), [])


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"returning": "id"}, TypeError, "returning must be a list"),
        ({"columns": "id"}, TypeError, "columns must be a list"),
        ({"columns": ["id", "id"]}, ValueError, "twice"),
        ({"columns": [""]}, ValueError, "empty"),
        ({"column_types": ["int8"]}, TypeError, "column_types must be a dict"),
    ],
)
def test_insert_bad_options(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _bulk_plan.plan_insert("t", [{"id": 1}], **kwargs)


@pytest.mark.nodb
def test_records_must_be_a_list() -> None:
    with pytest.raises(TypeError, match="records must be a list"):
        _bulk_plan.plan_insert("t", {"id": 1})  # type: ignore[arg-type]


# --- update / delete / select / condition (no server) ----------------------------------------


@pytest.mark.nodb
def test_update_sql() -> None:
    plan = _bulk_plan.plan_update(
        "app.users",
        [{"where": {"id": 1}, "set": {"name": "x"}}, {"where": {"id": 2}, "set": {}}],
        where_columns=["id"],
        set_columns=["name"],
        column_types=TYPES,
        returning=["id"],
    )
    assert texts(plan) == [
        (
            'UPDATE "app"."users" SET "name" = pgfast_bulk.s0 FROM (SELECT '
            "unnest($1::int8[]), unnest($2::text[])) AS pgfast_bulk(w0, s0) "
            'WHERE "users"."id" = pgfast_bulk.w0 RETURNING "id"',
            [binary("int8", 1, 2), '{"x",NULL}'],
        )
    ]


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("updates", "error", "message"),
    [
        ([{"where": {"id": 1}}], ValueError, "update 0 has no 'set'"),
        ([{"set": {"name": 1}}], ValueError, "update 0 has no 'where'"),
        ([{"where": {"id": 1}, "set": {}, "sett": 1}], ValueError, "record 0 has key 'sett'"),
        ([{"where": {"id": 1, "x": 2}, "set": {}}], ValueError, "record 0 has key 'x'"),
        ([[1]], ValueError, "record 0 has 1 values, expected 2"),
    ],
)
def test_update_rejects(updates: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _bulk_plan.plan_update("t", updates, where_columns=["id"], set_columns=["name"])


@pytest.mark.nodb
def test_delete_sql_batches() -> None:
    plan = _bulk_plan.plan_delete(
        "t",
        [{"a": 1, "b": "x"}, {"a": 2}, {"b": "z"}],
        where_columns=["a", "b"],
        column_types={"a": "int4", "b": "text"},
        batch_rows=2,
    )
    assert texts(plan) == [
        (
            'DELETE FROM "t" WHERE ("a", "b") IN (SELECT unnest($1::int4[]), unnest($2::text[]))',
            [binary("int4", 1, 2), '{"x",NULL}'],
        ),
        (
            'DELETE FROM "t" WHERE ("a", "b") IN (SELECT unnest($1::int4[]), unnest($2::text[]))',
            [binary("int4", None), '{"z"}'],
        ),
    ]


@pytest.mark.nodb
def test_select_sql() -> None:
    plan = _bulk_plan.plan_select(
        "t",
        [{"id": 1}],
        where_columns=["id"],
        column_types=TYPES,
        select_columns=["id", "name"],
        distinct_columns=["name"],
        order_by=["name", "-id"],
        limit=5,
    )
    assert texts(plan) == [
        (
            'SELECT DISTINCT ON ("name") "id", "name" FROM "t" WHERE ("id") IN '
            '(SELECT unnest($1::int8[])) ORDER BY "name" ASC, "id" DESC LIMIT $2',
            [binary("int8", 1), 5],
        )
    ]
    plain = _bulk_plan.plan_select("t", [{"id": 1}], where_columns=["id"], column_types=TYPES)
    assert texts(plain)[0][0] == ('SELECT * FROM "t" WHERE ("id") IN (SELECT unnest($1::int8[]))')
    assert _bulk_plan.plan_select("t", [], where_columns=["id"], column_types=TYPES).queries() == []


@pytest.mark.nodb
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit must be an int >= 0"),
        ({"limit": True}, "limit must be an int >= 0"),
        ({"order_by": ["-"]}, "empty"),
        ({"where_columns": []}, "at least one column"),
    ],
)
def test_select_rejects(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"where_columns": ["id"], **kwargs}
    with pytest.raises(ValueError, match=message):
        _bulk_plan.plan_select("t", [{"id": 1}], **options)


@pytest.mark.nodb
def test_bulk_condition() -> None:
    cond = _bulk_plan.bulk_condition(
        [{"a": 1, "b": "x"}], where_columns=["a", "b"], column_types={"a": "int4", "b": "text"}
    )
    text, params = cond.format()
    assert (text, _plain(params)) == (
        '("a", "b") IN (SELECT unnest($1::int4[]), unnest($2::text[]))',
        [binary("int4", 1), '{"x"}'],
    )
    with pytest.raises(ValueError, match="no type for column\\(s\\) 'b'"):
        _bulk_plan.bulk_condition([{"a": 1}], where_columns=["a", "b"], column_types={"a": "int4"})


@pytest.mark.nodb
def test_copy_helpers() -> None:
    assert _bulk_plan.copy_query("app.t", ["a", "b"]).format() == (
        'COPY "app"."t" ("a", "b") FROM STDIN (FORMAT BINARY)',
        [],
    )
    info = _bulk_plan.table_info(
        _bulk_plan.parse_table("t"), [("a", "integer", 23), ("b", "text", 25)]
    )
    assert _bulk_plan.copy_types(info, ["b", "a"]) == [25, 23]
    with pytest.raises(ValueError, match="'c'"):
        _bulk_plan.copy_types(info, ["c"])


# --- against a real server -----------------------------------------------------------------

ALL_TYPES = {
    "id": "int8",
    "small": "int4",
    "name": "text",
    "amount": "numeric(12,3)",
    "active": "bool",
    "at": "timestamptz",
    "key": "uuid",
    "doc": "jsonb",
    "tags": "text[]",
    "grid": "int[]",
    "score": "float8",
}


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True, cursor_factory=psycopg.RawCursor) as c:
        c.execute("DROP SCHEMA IF EXISTS bulk_test CASCADE")
        c.execute("CREATE SCHEMA bulk_test")
        columns = ", ".join(f"{name} {t}" for name, t in ALL_TYPES.items())
        c.execute(f"CREATE TABLE bulk_test.items ({columns}, PRIMARY KEY (id))")
        yield c
        c.execute("DROP SCHEMA bulk_test CASCADE")


def run(conn: psycopg.Connection[Any], queries: list[SQLQuery]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    with conn.transaction():
        for query in queries:
            cur = conn.execute(*query.format())
            if cur.description is not None:
                rows.extend(cur.fetchall())
    return rows


def looked_up(conn: psycopg.Connection[Any], plan: _bulk_plan.BulkPlan) -> list[SQLQuery]:
    info = None
    if plan.needs_types:
        info = _bulk_plan.table_info(
            plan.table, run(conn, [_bulk_plan.column_types_query(plan.table)])
        )
    return plan.queries(info)


def sample(i: int) -> dict[str, Any]:
    """A record exercising every type, NULLs and awkward text, varying with ``i``."""
    if i % 7 == 3:
        return {"id": i}  # all NULL but the key
    return {
        "id": i,
        "small": -i,
        "name": f'n{i} "q" \\ {{x}}, é' if i % 2 else "",
        "amount": Decimal(i) / 8,
        "active": i % 3 == 0,
        "at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i),
        "key": uuid.UUID(int=i),
        "doc": [{"k": i, "s": "x"}, [i], "str", i, None][i % 5],
        "tags": [[], ["a", None, 'b"c', "NULL"], [f"t{i}", "{", "}"]][i % 3],
        "grid": [[i, None], [], [1, 2, 3]][i % 3],
        "score": i / 3,
    }


def read_back(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(f"SELECT {', '.join(ALL_TYPES)} FROM bulk_test.items ORDER BY id")
    return [
        {name: value for name, value in zip(ALL_TYPES, row, strict=True) if value is not None}
        for row in cur.fetchall()
    ]


def expected(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # JSON null in a jsonb column is sent as SQL NULL, like every None.
    return [{k: v for k, v in r.items() if v is not None} for r in records]


def test_looked_up_types_are_unmodified_base_types(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE DOMAIN bulk_test.short AS varchar(5) CHECK (VALUE <> 'bad')")
    conn.execute("CREATE DOMAIN bulk_test.shorter AS bulk_test.short")
    conn.execute("CREATE DOMAIN bulk_test.ints AS int4[]")
    conn.execute(
        "CREATE TABLE bulk_test.mods (a varchar(5), b char(2)[], c numeric(5,2), d bit(3), "
        "e bulk_test.short, f bulk_test.shorter[], g bulk_test.ints, h interval day, i real)"
    )
    table = _bulk_plan.parse_table("bulk_test.mods")
    info = _bulk_plan.table_info(table, run(conn, [_bulk_plan.column_types_query(table)]))
    assert info.columns == tuple("abcdefghi")
    assert dict(info.types) == {
        "a": "character varying",
        "b": "bpchar[]",
        "c": "numeric",
        "d": '"bit"',
        "e": "character varying",
        "f": "character varying[]",
        "g": "integer[]",
        "h": "interval",
        "i": "real",
    }
    own = run(conn, [sql("SELECT 'bulk_test.shorter[]'::regtype::oid::int8")])[0][0]
    assert info.oids["f"] == own  # COPY sends the column's own type


def test_insert_every_type_round_trips(conn: psycopg.Connection[Any]) -> None:
    records = [sample(i) for i in range(40)]
    plan = _bulk_plan.plan_insert(
        "bulk_test.items", records, column_types=ALL_TYPES, returning=["id"], batch_rows=16
    )
    assert len(plan.queries()) == 3
    assert sorted(r[0] for r in run(conn, plan.queries())) == list(range(40))
    assert read_back(conn) == expected(records)


def test_insert_with_looked_up_types(conn: psycopg.Connection[Any]) -> None:
    records = [sample(i) for i in range(10_000)]
    plan = _bulk_plan.plan_insert("bulk_test.items", records)
    assert plan.needs_types
    assert run(conn, looked_up(conn, plan)) == []
    assert read_back(conn) == expected(records)


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("int[]", [[1, 2], [3, None]]),
        ("int[]", [[[1], [2]], [[3], [4]]]),
        ("bool[]", [True, False, None]),
        ("bytea[]", [b"\x00\xff", b""]),
        ("jsonb[]", [{"a": [1]}, [2], "s", 1.5]),
        ("json", {"k": ["v", None]}),
        ("numeric(6,2)[]", [Decimal("1.50"), Decimal("-3.00")]),
        ("date[]", [dt.date(2024, 2, 29)]),
        ("timestamptz", dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)),
        ("interval", dt.timedelta(days=-1, seconds=5, microseconds=7)),
        ("interval[]", [dt.timedelta(days=1, seconds=2)]),
        ("uuid[]", [uuid.UUID(int=5)]),
        ("text[]", ["", "NULL", " spaced ", "{}", 'q"', "b\\", "é,ü"]),
        ("integer ARRAY", [1]),
        ("float8", float("-inf")),
        ("bytea", b"\x00\\x"),
    ],
)
def test_value_round_trips(conn: psycopg.Connection[Any], type_name: str, value: Any) -> None:
    conn.execute(f"CREATE TABLE bulk_test.one (v {type_name})")
    plan = _bulk_plan.plan_insert("bulk_test.one", [{"v": value}, {"v": None}])
    run(conn, looked_up(conn, plan))
    cur = conn.execute("SELECT v FROM bulk_test.one")
    assert sorted(cur.fetchall(), key=lambda row: row[0] is None) == [(value,), (None,)]


@pytest.mark.parametrize(
    ("type_name", "values"),
    [
        ("bool", [True, False]),
        ("smallint", [-(2**15), 2**15 - 1, 0]),
        ("integer", [-(2**31), 2**31 - 1]),
        ("int8", [-(2**63), 2**63 - 1]),
        ("double precision", [0.1, -0.0, float("inf"), 5e-324, 2**53 + 1, -(10**30)]),
    ],
)
def test_binary_values_round_trip(
    conn: psycopg.Connection[Any], type_name: str, values: list[Any]
) -> None:
    conn.execute(f"CREATE TABLE bulk_test.one (i int, v {type_name})")
    records = [{"i": i, "v": v} for i, v in enumerate([*values, None])]
    plan = _bulk_plan.plan_insert("bulk_test.one", records)
    [query] = looked_up(conn, plan)
    assert all(isinstance(p, _bulk_plan.BinaryArray) for p in query.format()[1])
    run(conn, [query])
    back = [v for (v,) in conn.execute("SELECT v FROM bulk_test.one ORDER BY i")]
    exact = [
        float(v) if isinstance(v, int) and type_name == "double precision" else v for v in values
    ]
    assert back == [*exact, None]
    assert [type(v) for v in back[:-1]] == [type(v) for v in exact]
    assert [math.copysign(1, v) for v in back[:-1]] == [math.copysign(1, v) for v in exact]


def test_value_that_does_not_fit_gets_the_servers_error(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE bulk_test.one (v int4)")
    plan = _bulk_plan.plan_insert("bulk_test.one", [{"v": 1}, {"v": "x"}])
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="integer"):
        run(conn, looked_up(conn, plan))
    assert conn.execute("SELECT count(*) FROM bulk_test.one").fetchone() == (0,)


def test_other_types_round_trip_through_psycopg(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE bulk_test.hosts (addr inet, id int8)")
    records: list[dict[str, Any]] = [
        {"addr": ipaddress.ip_address("10.0.0.1"), "id": 1},
        {"addr": None, "id": 2},
    ]
    plan = _bulk_plan.plan_insert("bulk_test.hosts", records)
    [query] = looked_up(conn, plan)
    assert query.format()[1][0] == [records[0]["addr"], None]  # sent as a list, not a literal
    run(conn, [query])
    cur = conn.execute("SELECT addr, id FROM bulk_test.hosts ORDER BY id")
    assert cur.fetchall() == [(records[0]["addr"], 1), (None, 2)]


def test_quoted_schema_and_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute('CREATE TABLE bulk_test."Odd.Name" ("Key" int8, "the value" text[])')
    table = sql.ident("bulk_test", "Odd.Name")
    plan = _bulk_plan.plan_insert(table, [{"Key": 1, "the value": ["x"]}, {"Key": 2}])
    run(conn, looked_up(conn, plan))
    cur = conn.execute('SELECT "Key", "the value" FROM bulk_test."Odd.Name" ORDER BY 1')
    assert cur.fetchall() == [(1, ["x"]), (2, None)]


def test_missing_table_is_undefined_table(conn: psycopg.Connection[Any]) -> None:
    plan = _bulk_plan.plan_insert("bulk_test.nope", [{"id": 1}])
    with pytest.raises(UndefinedTable, match=r'"bulk_test"\."nope" does not exist'):
        looked_up(conn, plan)


def test_unknown_key_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="record 2 has key 'bogus'"):
        _bulk_plan.plan_insert("bulk_test.items", [{"id": 1}, {"id": 2}, {"id": 3, "bogus": 1}])
    assert read_back(conn) == []


def test_failing_row_rolls_back_the_batches(conn: psycopg.Connection[Any]) -> None:
    records: list[dict[str, Any]] = [{"id": i} for i in range(10)]
    records[7]["small"] = 2**40  # out of range for int4
    plan = _bulk_plan.plan_insert(
        "bulk_test.items", records, columns=["id", "small"], column_types=ALL_TYPES, batch_rows=3
    )
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        run(conn, plan.queries())
    assert read_back(conn) == []


def test_update_delete_select(conn: psycopg.Connection[Any]) -> None:
    records = [sample(i) for i in range(20)]
    run(conn, _bulk_plan.plan_insert("bulk_test.items", records, column_types=ALL_TYPES).queries())

    updates: list[dict[str, Any]] = [
        {"where": {"id": i}, "set": {"name": f"new {i}", "tags": [str(i), None], "doc": {"i": i}}}
        for i in range(0, 20, 2)
    ]
    plan = _bulk_plan.plan_update(
        "bulk_test.items",
        updates,
        where_columns=["id"],
        set_columns=["name", "tags", "doc"],
        returning=["id", "name"],
        batch_rows=4,
    )
    changed = run(conn, looked_up(conn, plan))
    assert sorted(changed) == [(i, f"new {i}") for i in range(0, 20, 2)]
    for record in records[::2]:
        i = record["id"]
        record.update(name=f"new {i}", tags=[str(i), None], doc={"i": i})
    assert read_back(conn) == expected(records)

    select = _bulk_plan.plan_select(
        "bulk_test.items",
        [{"id": i} for i in (1, 2, 3, 4, 99)],
        where_columns=["id"],
        select_columns=["id", "active"],
        order_by=["-id"],
        limit=3,
    )
    assert run(conn, looked_up(conn, select)) == [(4, False), (3, None), (2, False)]
    distinct = _bulk_plan.plan_select(
        "bulk_test.items",
        [{"id": i} for i in range(12)],
        where_columns=["id"],
        select_columns=["active", "id"],
        distinct_columns=["active"],
        order_by=["active", "id"],
    )
    assert run(conn, looked_up(conn, distinct)) == [(False, 1), (True, 0), (None, 3)]

    delete = _bulk_plan.plan_delete(
        "bulk_test.items",
        [{"id": i, "key": uuid.UUID(int=i)} for i in range(10)],
        where_columns=["id", "key"],
        batch_rows=3,
    )
    run(conn, looked_up(conn, delete))
    # Row 3 has a NULL key, which matches nothing: it stays.
    assert [r["id"] for r in read_back(conn)] == [3, *range(10, 20)]


def test_bulk_condition_in_own_query(conn: psycopg.Connection[Any]) -> None:
    run(
        conn,
        _bulk_plan.plan_insert(
            "bulk_test.items", [sample(i) for i in range(10)], column_types=ALL_TYPES
        ).queries(),
    )
    cond = _bulk_plan.bulk_condition(
        [
            {"id": 1, "tags": ["a", None, 'b"c', "NULL"]},
            {"id": 2, "tags": ["t2", "{", "}"]},
            {"id": 5, "tags": []},
        ],
        where_columns=["id", "tags"],
        column_types=ALL_TYPES,
    )
    rows = run(conn, [sql("SELECT id FROM bulk_test.items WHERE {} ORDER BY id", cond)])
    assert rows == [(1,), (2,)]
