"""Sans-IO builders for bulk loading (docs/bulk.md): they build ``SQLQuery`` batches, run nothing.

Executor contract (what ``db.bulk_*`` on pools, connections, transactions and clusters do)::

    plan = _bulk.plan_insert(table, records, columns=..., column_types=..., returning=...)
    # or plan_update(table, updates, where_columns=..., set_columns=..., column_types=...,
    #                returning=...), plan_delete(table, conditions, where_columns=...,
    #                column_types=...), plan_select(table, conditions, where_columns=...,
    #                column_types=..., select_columns=..., distinct_columns=..., order_by=...,
    #                limit=...)
    # Bad input raised ValueError/TypeError above: nothing has been sent yet.
    info = None
    if plan.needs_types:                       # some column has no type in column_types
        info = pool_cache.get(plan.table.key)  # one lookup per table per pool
        if info is None:
            rows = conn.query(_bulk.column_types_query(plan.table))
            info = _bulk.table_info(plan.table, rows)  # raises UndefinedTable if missing
            pool_cache[plan.table.key] = info
    queries = plan.queries(info)                # ValueError for a column the table lacks
    # A cached ``info`` may predate an ALTER TABLE: look it up again when it lacks one of
    # ``plan.missing(None)``, or when the batches fail with a server error that stale types
    # may explain (then, if the types changed, run the whole call once more).
    # Run all of ``queries`` in ONE transaction (a savepoint inside a transaction), in order:
    #   plan.returns_rows -> concatenate tx.query(q) for each q
    #   otherwise         -> sum tx.execute(q) for each q
    # Results: bulk_insert -> the rows, or [] without returning; bulk_update -> the count,
    # or the rows with returning; bulk_delete -> the count; bulk_select -> the rows.
    # ``queries`` may be empty (no records): then no transaction is needed.

``copy_in`` uses ``copy_query(table, columns)`` (binary COPY statement),
``copy_types(info, columns)`` (OIDs for ``copy.set_types``) and
``pgfast._impl.flatten.records_to_rows(chunk, columns, start)`` per chunk.

How values travel: one array parameter per column, cast to the column type
without its modifier (see ``column_types_query``; modifiers in ``column_types``
are dropped too) and unnested server side. A bool, int2/4/8 or float8 column whose values all fit
it exactly (bool; int in range; float or int) is sent as ONE binary array
(``flatten.binary_array``), the cheapest form for both sides; a value that
does not fit (a str, an int out of range...) sends the column as text, so the
server reports it as it would any bad value. Any other column whose values are
all of common types (None, bool, int, float, str, Decimal, UUID, date/time,
timedelta, bytes) is sent as ONE string, its array literal (``{1,"a",NULL}``),
written by the compiled ``flatten.array_literal``: psycopg adapts a list of
100,000 values element by element in Python, which would cost several times
the whole server-side insert. A column holding anything else is sent as a list
and adapted by psycopg (and its registered adapters). Array-typed columns
(``int[]``) and ``json``/``jsonb`` are sent as ``text[]`` of each value's
literal (or JSON text) and cast back per row: a list of lists would be one 2-D
array, which ``unnest`` flattens into scalars (and ragged lists are rejected),
and JSON lists or strings would be read as arrays or text.

Batches hold at most ``MAX_BATCH_ROWS`` rows and about ``MAX_BATCH_BYTES``
of parameter data: the whole Bind message is built in memory by psycopg and
the server, and each array value must stay under PostgreSQL's 1 GB allocation
limit; past ~10,000 rows a larger statement is no faster, so the limits cost
nothing while keeping every message at a few tens of MB.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.errors import UndefinedTable
from psycopg.pq import Format
from psycopg.types.json import Json, Jsonb

from pgfast._impl import flatten
from pgfast._sql import SQLQuery, sql

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ROWS",
    "BulkPlan",
    "Table",
    "TableInfo",
    "bulk_condition",
    "check_type",
    "column_types_query",
    "copy_query",
    "copy_types",
    "parse_table",
    "plan_delete",
    "plan_insert",
    "plan_select",
    "plan_update",
    "table_info",
]

MAX_BATCH_ROWS = 50_000
MAX_BATCH_BYTES = 32 * 1024 * 1024

# A type name spliced into SQL as a cast: words, optionally schema-qualified or
# double-quoted, each optionally with a numeric modifier, then array bounds.
# e.g. int8, text[], numeric(10,2), "MyType", app.mood, timestamp(3) with time zone
_WORD = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"\x00]|"")+")'
_NAME = rf"{_WORD}(?:\.{_WORD})?"
_MODIFIER = r"(?:\(\s*-?\d+(?:\s*,\s*-?\d+)?\s*\))"
_TYPE_RE = re.compile(
    rf"{_NAME}\s*{_MODIFIER}?(?:\s+{_WORD}\s*{_MODIFIER}?)*(?:\s*\[\s*\d*\s*\])*",
)
_JSON_TYPES = frozenset({"json", "jsonb", "pg_catalog.json", "pg_catalog.jsonb"})
# Column types whose values may travel as a binary array (``flatten.binary_array``):
# their names as written and as ``format_type`` spells them, lower case.
_BINARY_ELEMENTS = {
    "bool": "bool",
    "boolean": "bool",
    "int2": "int2",
    "smallint": "int2",
    "int4": "int4",
    "int": "int4",
    "integer": "int4",
    "int8": "int8",
    "bigint": "int8",
    "float8": "float8",
    "double precision": "float8",
}
_QUOTED_IDENT_RE = re.compile(r'"((?:[^"]|"")+)"')


@dataclass(frozen=True)
class Table:
    """A parsed table name: its parts (``("app", "users")``) as PostgreSQL stores them."""

    parts: tuple[str, ...]

    @property
    def key(self) -> tuple[str, ...]:
        """The key under which an executor caches this table's ``TableInfo``."""
        return self.parts

    @property
    def ident(self) -> SQLQuery:
        return sql.ident(*self.parts)

    @property
    def name(self) -> str:
        """The quoted name, e.g. ``"app"."users"`` (for ``to_regclass`` and messages)."""
        return ".".join('"' + part.replace('"', '""') + '"' for part in self.parts)


def parse_table(table: str | SQLQuery) -> Table:
    """``"users"``, ``"app.users"`` or ``sql.ident(...)`` as a ``Table``."""
    if isinstance(table, SQLQuery):
        text, params = table.format()
        parts = [m.group(1).replace('""', '"') for m in _QUOTED_IDENT_RE.finditer(text)]
        if params or text != Table(tuple(parts)).name or not 1 <= len(parts) <= 2:
            raise ValueError(
                f"table must be a name or sql.ident(...) of a table, not the query {text!r}"
            )
    elif isinstance(table, str):
        parts = table.split(".")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ValueError(
                f"table must be 'name' or 'schema.name', not {table!r} "
                "(use sql.ident(...) for names that contain dots)"
            )
    else:
        raise TypeError(f"table must be a str or sql.ident(...), not {type(table).__name__}")
    sql.ident(*parts)  # empty, NUL and over-long names raise ValueError here
    return Table(tuple(parts))


def check_type(column: str, type_name: object) -> str:
    """``type_name``, stripped, if it is a safe PostgreSQL type name; else an error naming
    ``column``."""
    if not isinstance(type_name, str):
        raise TypeError(
            f"the type of column {column!r} must be a str such as 'int8' or 'text[]', "
            f"not {type(type_name).__name__}"
        )
    if _TYPE_RE.fullmatch(type_name.strip()) is None:
        raise ValueError(
            f"column {column!r} has an invalid type name {type_name!r} "
            "(expected a PostgreSQL type such as 'int8', 'text[]' or 'numeric(10,2)')"
        )
    return type_name.strip()


# A quoted name (kept as it is) or a type modifier (dropped), for ``_unmodified``.
_QUOTED_OR_MODIFIER_RE = re.compile(rf'("(?:[^"]|"")*")|\s*{_MODIFIER}')
_FLOAT_RE = re.compile(r"float\s*\(\s*(\d+)\s*\)", re.IGNORECASE)
_ARRAY_SUFFIX_RE = re.compile(r"(\s*\[\s*\d*\s*\])+$|\s+array$", re.IGNORECASE)
# Spellings that, without a modifier, mean length 1: ``character`` is
# ``character(1)``, so the unbounded type is spelt ``bpchar`` (and ``"bit"``).
_UNBOUNDED = {
    "char": "bpchar",
    "character": "bpchar",
    "nchar": "bpchar",
    "national char": "bpchar",
    "national character": "bpchar",
    "bit": '"bit"',
}


def _unmodified(type_name: str) -> str:
    """A checked type name without its modifiers: what a parameter is cast to.

    ``varchar(5)`` -> ``varchar``, ``char(2)[]`` -> ``bpchar[]``, ``numeric(10,2)``
    -> ``numeric``, ``interval day`` -> ``interval``; ``float(p)`` names a type,
    not a modifier: ``real`` up to 24 bits, ``double precision`` up to 53.
    """
    floated = _FLOAT_RE.fullmatch(_ARRAY_SUFFIX_RE.split(type_name, 1)[0])
    if floated is not None:
        bits = int(floated.group(1))
        if not 1 <= bits <= 53:
            return type_name  # the server names the error
        type_name = ("real" if bits <= 24 else "double precision") + type_name[floated.end() :]
    stripped = _QUOTED_OR_MODIFIER_RE.sub(lambda m: m.group(1) or "", type_name)
    suffix = _ARRAY_SUFFIX_RE.search(stripped)
    base = stripped[: suffix.start()] if suffix else stripped
    words = " ".join(base.lower().split())
    if words.split(" ", 1)[0] == "interval":  # ``interval day to second``: fields truncate
        base = "interval"
    base = _UNBOUNDED.get(words, base)
    return base + (suffix.group(0) if suffix else "")


def _is_array_type(type_name: str) -> bool:
    return type_name.endswith("]") or type_name.lower().rsplit(None, 1)[-1] == "array"


@dataclass(frozen=True)
class TableInfo:
    """A table's columns (in order), their type names and type OIDs, as looked up once."""

    columns: tuple[str, ...]
    types: Mapping[str, str]
    oids: Mapping[str, int]


def column_types_query(table: Table) -> SQLQuery:
    """The query listing ``table``'s columns: rows of ``(attname, type, oid)``.

    ``type`` is what parameters are cast to: the column's type without its
    modifier (``character varying``, not ``character varying(5)``; ``bpchar``
    and ``"bit"``, which unlike ``character`` and ``bit`` mean no length), and a
    domain (or an array of one) as its base type. A cast applies a modifier by
    truncating or rounding, and a domain's checks, where a comparison wants
    neither; the INSERT or UPDATE assigning the value to the column enforces
    both, raising as a plain INSERT would. ``oid`` is the column's own type.
    """
    # Walk each column's type down through domains (and into an array's element
    # when that is a domain), keeping the deepest step: its type, or the array
    # type of it when the walk went through an array.
    return sql(
        "WITH RECURSIVE walk (attnum, attname, atttypid, typ, in_array, depth) AS ("
        " SELECT attnum, attname, atttypid, atttypid, false, 0"
        " FROM pg_catalog.pg_attribute"
        " WHERE attrelid = to_regclass({}::text)::oid AND attnum > 0 AND NOT attisdropped"
        " UNION ALL"
        " SELECT w.attnum, w.attname, w.atttypid,"
        " CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END,"
        " w.in_array OR t.typtype <> 'd', w.depth + 1"
        " FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.typ"
        " LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem"
        " WHERE t.typtype = 'd' OR (NOT w.in_array AND t.typcategory = 'A' AND e.typtype = 'd')"
        ") SELECT DISTINCT ON (w.attnum) w.attname, format_type(CASE"
        " WHEN NOT w.in_array THEN w.typ WHEN t.typarray <> 0 THEN t.typarray ELSE w.atttypid"
        " END, -1) AS type, w.atttypid::int8 AS oid"
        " FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.typ"
        " ORDER BY w.attnum, w.depth DESC",
        table.name,
    )


def table_info(table: Table, rows: Sequence[Any]) -> TableInfo:
    """``TableInfo`` from the rows of ``column_types_query`` (dict or tuple rows)."""
    if not rows:
        raise UndefinedTable(f"table {table.name} does not exist (or has no columns)")
    triples = [
        (r["attname"], r["type"], r["oid"]) if isinstance(r, Mapping) else tuple(r) for r in rows
    ]
    return TableInfo(
        columns=tuple(name for name, _, _ in triples),
        types={name: check_type(name, type_name) for name, type_name, _ in triples},
        oids={name: int(oid) for name, _, oid in triples},
    )


def copy_query(table: str | SQLQuery | Table, columns: Sequence[str]) -> SQLQuery:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)``."""
    parsed = table if isinstance(table, Table) else parse_table(table)
    return sql("COPY {} ({}) FROM STDIN (FORMAT BINARY)", parsed.ident, _idents(_names(columns)))


def copy_types(info: TableInfo, columns: Sequence[str]) -> list[int]:
    """The type OIDs of ``columns`` (for psycopg's ``copy.set_types``)."""
    missing = [c for c in columns if c not in info.oids]
    if missing:
        raise ValueError(f"{_unknown_columns(missing)} (the table has {list(info.columns)!r})")
    return [info.oids[c] for c in columns]


# --- values ---------------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    if isinstance(value, (Json, Jsonb)):
        value = value.obj
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _scalar_text(value: Any) -> str | None:
    """The text form of a value of a common type that ``array_literal`` does not write itself."""
    if isinstance(value, Decimal):
        # PostgreSQL knows one NaN: not "-NaN", "sNaN" or a NaN with a payload.
        return "NaN" if value.is_nan() else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    return None


def _element_text(value: Any, json_elements: bool) -> str:
    if json_elements or isinstance(value, dict):
        return _json_text(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    text = _scalar_text(value)
    if text is None:
        raise TypeError(f"cannot send a {type(value).__name__} inside an array")
    return text


def _array_literal(value: Sequence[Any], json_elements: bool) -> str:
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, (list, tuple)) and not json_elements:
            parts.append(_array_literal(item, json_elements))
        else:
            text = _element_text(item, json_elements)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


class BinaryArray:
    """An array parameter already in PostgreSQL's binary format, sent as it is."""

    __slots__ = ("data", "type_name")

    def __init__(self, data: bytes, type_name: str) -> None:
        self.data = data
        self.type_name = type_name

    def __len__(self) -> int:
        # Its size, for budgets such as a transaction's record of what it sent.
        return len(self.data)

    def __repr__(self) -> str:
        return f"<{self.type_name}[] in binary, {len(self.data)} bytes>"


class _BinaryArrayDumper(Dumper):
    # OID 0 ("unknown"): the server takes the parameter's type from its cast
    # ($1::int4[]), and array_recv checks the element type in the data.
    format = Format.BINARY

    def dump(self, obj: BinaryArray) -> Buffer:
        return obj.data


psycopg.adapters.register_dumper(BinaryArray, _BinaryArrayDumper)


@dataclass(frozen=True)
class _Column:
    """How one column travels: its parameter's array type and the cast back, if any."""

    name: str
    type_name: str
    encode: Callable[[Any], str] | None = None
    binary: str | None = None  # the ``flatten.binary_array`` element type, if any

    @classmethod
    def of(cls, name: str, type_name: str) -> _Column:
        base = type_name.lower()
        if _is_array_type(type_name):
            element = base.rstrip("[] ").removesuffix(" array")
            is_json = element in _JSON_TYPES

            def encode(value: Any) -> str:
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"expected a list, not {type(value).__name__}")
                return _array_literal(value, is_json)

            return cls(name, type_name, encode)
        if base in _JSON_TYPES:
            return cls(name, type_name, _json_text)
        return cls(name, type_name, binary=_BINARY_ELEMENTS.get(" ".join(base.split())))

    def param(self, values: list[Any], first_index: int) -> SQLQuery:
        """One parameter holding ``values``: a binary array when the column's type allows
        and every value fits it exactly, else an array literal (one string, cheap for
        psycopg to send) when every value has a known text form, else the list itself."""
        if self.binary is not None:
            data = flatten.binary_array(values, self.binary)
            if data is not None:
                return sql(
                    "{}::{}", BinaryArray(data, self.type_name), sql.unsafe(self.type_name + "[]")
                )
        if self.encode is None:
            literal = flatten.array_literal(values, _scalar_text)
            if literal is None:
                return sql("{}::{}", values, sql.unsafe(self.type_name + "[]"))
            self._check_nul(literal, values, first_index)
            return sql("{}::{}", literal, sql.unsafe(self.type_name + "[]"))
        encoded: list[str | None] = []
        for index, value in enumerate(values, first_index):
            try:
                encoded.append(None if value is None else self.encode(value))
            except (TypeError, ValueError) as exc:
                raise type(exc)(
                    f"record {index}, column {self.name!r} ({self.type_name}): {exc}"
                ) from None
        literal = flatten.array_literal(encoded, None)
        assert literal is not None  # every element is a str or None
        self._check_nul(literal, encoded, first_index)
        return sql("{}::text[]", literal)

    def _check_nul(self, literal: str, values: list[Any], first_index: int) -> None:
        """PostgreSQL text cannot hold NUL: name the record instead of failing the batch."""
        if "\x00" in literal:
            index = next(i for i, v in enumerate(values) if "\x00" in str(v))
            raise ValueError(
                f"record {first_index + index}, column {self.name!r} ({self.type_name}): "
                "the value contains a NUL character (\\x00), which PostgreSQL cannot store"
            )

    def output(self, param: SQLQuery) -> SQLQuery:
        """The column's values, one per row, from its array parameter ``param``."""
        if self.encode is None:
            return sql("unnest({})", param)
        return sql("unnest({})::{}", param, sql.unsafe(self.type_name))


def _unnest(columns: Sequence[_Column], values: Sequence[list[Any]], first: int) -> SQLQuery:
    """``SELECT unnest($1::t1[]), ...``, casting text-encoded columns back.

    Not ``SELECT * FROM UNNEST($1, ...)``: a function scan stores all its rows
    before returning the first (spilling to disk past ``work_mem``), while
    unnest calls in the select list stream them, which makes a bulk insert
    about a third faster on the server.
    """
    return sql(
        "SELECT {}",
        sql.join([c.output(c.param(v, first)) for c, v in zip(columns, values, strict=True)], ", "),
    )


# --- names and options ------------------------------------------------------------------------


def _names(columns: object, what: str = "columns") -> list[str]:
    if isinstance(columns, str) or not isinstance(columns, (list, tuple)):
        raise TypeError(f"{what} must be a list of column names, not {type(columns).__name__}")
    names = list(columns)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what}: column names must be str, not {type(name).__name__}")
        sql.ident(name)  # empty, NUL or over 63 bytes: ValueError
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a column twice: {names!r}")
    return names


def _idents(names: Sequence[str]) -> SQLQuery:
    return sql.join([sql.ident(n) for n in names], ", ")


def _given_types(column_types: object) -> dict[str, str]:
    if column_types is None:
        return {}
    if not isinstance(column_types, Mapping):
        raise TypeError(
            f"column_types must be a dict of column name -> type name, "
            f"not {type(column_types).__name__}"
        )
    return {name: _unmodified(check_type(name, t)) for name, t in column_types.items()}


def _returning(returning: object) -> SQLQuery | None:
    if returning is None or isinstance(returning, SQLQuery):
        return returning
    if isinstance(returning, (list, tuple)):
        return _idents(_names(returning, "returning"))
    raise TypeError(
        f"returning must be a list of column names or an SQLQuery, not {type(returning).__name__}"
    )


def _unknown_columns(missing: Sequence[str]) -> str:
    return f"no type for column(s) {', '.join(map(repr, missing))}"


@dataclass(frozen=True)
class BulkPlan:
    """A validated bulk operation waiting for column types; see the module docstring."""

    table: Table
    columns: tuple[str, ...]
    column_types: Mapping[str, str]
    returns_rows: bool
    _build: Callable[[list[_Column]], list[SQLQuery]] = field(repr=False)

    @property
    def needs_types(self) -> bool:
        """Whether some column's type must be looked up (``column_types_query``)."""
        return any(c not in self.column_types for c in self.columns)

    def missing(self, info: TableInfo | None) -> list[str]:
        """The columns that have a type neither in ``column_types`` nor in ``info``."""
        looked_up = info.types if info is not None else {}
        return [c for c in self.columns if c not in self.column_types and c not in looked_up]

    def queries(self, info: TableInfo | None = None) -> list[SQLQuery]:
        """The batches, with types from ``column_types`` first, then from ``info``."""
        looked_up = info.types if info is not None else {}
        missing = self.missing(info)
        if missing:
            where = (
                f"table {self.table.name} has no such column"
                if info is not None
                else "pass them in column_types"
            )
            raise ValueError(f"{_unknown_columns(missing)}: {where}")
        types = {**looked_up, **self.column_types}
        return self._build([_Column.of(c, types[c]) for c in self.columns])


def _batched(
    values: list[list[Any]],
    build: Callable[[list[list[Any]], int], SQLQuery],
    batch_rows: int,
    batch_bytes: int,
) -> list[SQLQuery]:
    queries = []
    start = 0
    for end in flatten.batch_ends(values, batch_rows, batch_bytes):
        queries.append(build([v[start:end] for v in values], start))
        start = end
    return queries


def _as_list(records: object, what: str) -> list[Any]:
    if isinstance(records, list):
        return records
    if isinstance(records, Iterable) and not isinstance(records, (str, bytes, Mapping)):
        return list(records)
    raise TypeError(f"{what} must be a list of records, not {type(records).__name__}")


def plan_insert(
    table: str | SQLQuery,
    records: Sequence[Any],
    *,
    columns: Sequence[str] | None = None,
    column_types: Mapping[str, str] | None = None,
    returning: Sequence[str] | SQLQuery | None = None,
    batch_rows: int = MAX_BATCH_ROWS,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> BulkPlan:
    """``INSERT INTO table (cols) SELECT unnest(...), ... [RETURNING ...]`` per batch."""
    parsed = parse_table(table)
    rows = _as_list(records, "records")
    names = _names(flatten.keys_of(rows) if columns is None else columns)
    if rows and not names:
        raise ValueError("no columns to insert: pass columns or records with keys")
    values = flatten.records_to_columns(rows, names)
    tail = _returning(returning)

    def build(spec: list[_Column]) -> list[SQLQuery]:
        def one(batch: list[list[Any]], first: int) -> SQLQuery:
            query = sql(
                "INSERT INTO {} ({}) {}", parsed.ident, _idents(names), _unnest(spec, batch, first)
            )
            return query if tail is None else sql("{} RETURNING {}", query, tail)

        return _batched(values, one, batch_rows, batch_bytes)

    return BulkPlan(parsed, tuple(names), _given_types(column_types), tail is not None, build)


def _condition(spec: Sequence[_Column], values: list[list[Any]], first: int) -> SQLQuery:
    return sql("({}) IN ({})", _idents([c.name for c in spec]), _unnest(spec, values, first))


def _conditions(conditions: object, where_columns: object) -> tuple[list[str], list[list[Any]]]:
    names = _names(where_columns, "where_columns")
    if not names:
        raise ValueError("where_columns must name at least one column")
    return names, flatten.records_to_columns(_as_list(conditions, "conditions"), names)


def bulk_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    where_columns: Sequence[str],
    column_types: Mapping[str, str],
) -> SQLQuery:
    """``("a", "b") IN (SELECT unnest($1::t[]), unnest($2::t[]))`` for your own queries.

    A row matches when its ``where_columns`` equal one condition's values (a
    missing key is NULL, which matches nothing); no conditions match nothing.
    """
    names, values = _conditions(conditions, where_columns)
    types = _given_types(column_types)
    missing = [c for c in names if c not in types]
    if missing:
        raise ValueError(f"{_unknown_columns(missing)}: pass them in column_types")
    return _condition([_Column.of(c, types[c]) for c in names], values, 0)


def plan_delete(
    table: str | SQLQuery,
    conditions: Sequence[Mapping[str, Any]],
    *,
    where_columns: Sequence[str],
    column_types: Mapping[str, str] | None = None,
    batch_rows: int = MAX_BATCH_ROWS,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> BulkPlan:
    """``DELETE FROM table WHERE (cols) IN (SELECT unnest(...), ...)`` per batch."""
    parsed = parse_table(table)
    names, values = _conditions(conditions, where_columns)

    def build(spec: list[_Column]) -> list[SQLQuery]:
        def one(batch: list[list[Any]], first: int) -> SQLQuery:
            return sql("DELETE FROM {} WHERE {}", parsed.ident, _condition(spec, batch, first))

        return _batched(values, one, batch_rows, batch_bytes)

    return BulkPlan(parsed, tuple(names), _given_types(column_types), False, build)


def _order_by(order_by: object) -> SQLQuery:
    terms = []
    for term in _names(order_by, "order_by"):
        descending = term.startswith("-")
        name = term[1:] if descending else term
        terms.append(sql("{} DESC" if descending else "{} ASC", sql.ident(name)))
    return sql.join(terms, ", ")


def plan_select(
    table: str | SQLQuery,
    conditions: Sequence[Mapping[str, Any]],
    *,
    where_columns: Sequence[str],
    column_types: Mapping[str, str] | None = None,
    select_columns: Sequence[str] | None = None,
    distinct_columns: Sequence[str] | None = None,
    order_by: Sequence[str] | None = None,
    limit: int | None = None,
) -> BulkPlan:
    """One ``SELECT [DISTINCT ON (...)] ... WHERE (cols) IN (...) [ORDER BY] [LIMIT]``.

    Never batched: ``DISTINCT ON``, ``ORDER BY`` and ``LIMIT`` apply to the whole result.
    """
    parsed = parse_table(table)
    names, values = _conditions(conditions, where_columns)
    distinct = (
        sql("DISTINCT ON ({}) ", _idents(_names(distinct_columns, "distinct_columns")))
        if distinct_columns
        else sql.unsafe("")
    )
    selected = (
        sql.unsafe("*")
        if select_columns is None
        else _idents(_names(select_columns, "select_columns"))
    )
    ordering = _order_by(order_by) if order_by else None
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")

    def build(spec: list[_Column]) -> list[SQLQuery]:
        if not values[0]:
            return []
        query = sql(
            "SELECT {}{} FROM {} WHERE {}",
            distinct,
            selected,
            parsed.ident,
            _condition(spec, values, 0),
        )
        if ordering is not None:
            query = sql("{} ORDER BY {}", query, ordering)
        if limit is not None:
            query = sql("{} LIMIT {}", query, limit)
        return [query]

    return BulkPlan(parsed, tuple(names), _given_types(column_types), True, build)


def plan_update(
    table: str | SQLQuery,
    updates: Sequence[Mapping[str, Mapping[str, Any]]],
    *,
    where_columns: Sequence[str],
    set_columns: Sequence[str],
    column_types: Mapping[str, str] | None = None,
    returning: Sequence[str] | SQLQuery | None = None,
    batch_rows: int = MAX_BATCH_ROWS,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> BulkPlan:
    """``UPDATE table SET c = v.c FROM (SELECT unnest(...), ...) AS v WHERE table.k = v.k``.

    ``updates`` are ``{"where": {...}, "set": {...}}``; a key missing from
    ``set`` sets that column to NULL, like a missing key in ``bulk_insert``.
    """
    parsed = parse_table(table)
    where = _names(where_columns, "where_columns")
    changed = _names(set_columns, "set_columns")
    if not where or not changed:
        raise ValueError("where_columns and set_columns must each name at least one column")
    halves = flatten.records_to_columns(_as_list(updates, "updates"), ["where", "set"])
    for key, half in zip(("where", "set"), halves, strict=True):
        if None in half:
            raise ValueError(f"update {half.index(None)} has no {key!r} mapping")
    values = [
        *flatten.records_to_columns(halves[0], where),
        *flatten.records_to_columns(halves[1], changed),
    ]
    tail = _returning(returning)
    target = sql.ident(parsed.parts[-1])
    sources = [f"w{i}" for i in range(len(where))] + [f"s{i}" for i in range(len(changed))]

    def build(spec: list[_Column]) -> list[SQLQuery]:
        by_name = {c.name: c for c in spec}
        columns = [by_name[c] for c in where] + [by_name[c] for c in changed]
        assignments = sql.join(
            [
                sql("{} = pgfast_bulk.{}", sql.ident(c), sql.unsafe(s))
                for c, s in zip(changed, sources[len(where) :], strict=True)
            ],
            ", ",
        )
        matches = sql.join(
            [
                sql("{}.{} = pgfast_bulk.{}", target, sql.ident(c), sql.unsafe(s))
                for c, s in zip(where, sources[: len(where)], strict=True)
            ],
            " AND ",
        )

        def one(batch: list[list[Any]], first: int) -> SQLQuery:
            query = sql(
                "UPDATE {} SET {} FROM ({}) AS pgfast_bulk({}) WHERE {}",
                parsed.ident,
                assignments,
                _unnest(columns, batch, first),
                sql.unsafe(", ".join(sources)),
                matches,
            )
            return query if tail is None else sql("{} RETURNING {}", query, tail)

        return _batched(values, one, batch_rows, batch_bytes)

    names = tuple(dict.fromkeys([*where, *changed]))
    return BulkPlan(parsed, names, _given_types(column_types), tail is not None, build)
