"""Turn bulk-loading records into per-column lists or row tuples (pure twin).

The compiled twin ``pgfast._flatten_c`` has the same names and behaviour,
errors included; library code takes whichever ``pgfast._impl.flatten`` chose.

A *record* is a mapping (dict) from column name to value, or a tuple/list of
values in column order. A key missing from a mapping is ``None`` (NULL); a key
that is not a column is a ``ValueError`` naming the key and the record's
index, and a record of any other type is a ``TypeError`` naming its index.

Both twins read their input the same way, so that a record whose methods
misbehave gives the same result (or the same error) from either:

- The input is read once, into a snapshot (``tuple(records)``), before any
  record is looked at: a record whose methods change the input list can
  neither crash nor skew a load.
- Records are handled one after another, in order. A plain ``dict``,
  ``tuple`` or ``list`` record is read without running any of its (or its
  keys') methods. Other records run theirs in this order: a mapping is
  iterated once for its keys, then ``get`` is called once per column, in
  column order; a tuple/list subclass is read once with ``tuple(record)``.
- A key that is a ``str`` subclass counts as its ``str`` value (its own
  ``__eq__`` and ``__hash__`` are never used); any other non-``str`` key is
  not a column. Two keys that name the same column are a ``ValueError``.
  Column names that are ``str`` subclasses count as their ``str`` value too.
- Type checks look at an object's real type, never at a ``__class__`` it
  claims.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, repeat
from operator import is_
from typing import Any

from pgfast._flatten_messages import (
    BINARY_ELEMENTS,
    MAX_COLUMNS,
    bad_count,
    bad_element,
    bad_index,
    column_not_str,
    column_twice,
    columns_not_a_list,
    key_twice,
    not_a_record,
    unknown_key,
    wrong_length,
)

__all__ = [
    "array_literal",
    "batch_ends",
    "binary_array",
    "keys_of",
    "record_to_row",
    "records_to_columns",
    "records_to_rows",
    "tuples_to_columns",
]

# Size estimate (bytes) of one value in a bound array parameter: the element's
# length word plus its payload; non-text values are counted as 8 bytes.
_ELEMENT_OVERHEAD = 4
_FIXED_SIZE = 8

_MISSING: Any = object()
_POSITIONAL = (tuple, list)


class _Columns:
    """Checked column names (exact ``str``) and each one's position."""

    __slots__ = ("allowed", "index_of", "names")

    def __init__(self, columns: Any) -> None:
        if not issubclass(type(columns), _POSITIONAL):
            raise columns_not_a_list(columns)
        names: list[str] = []
        index_of: dict[str, int] = {}
        for name in tuple(columns):
            if type(name) is not str:
                if not issubclass(type(name), str):
                    raise column_not_str(name)
                name = str.__str__(name)
            if name in index_of:
                raise column_twice(name)
            index_of[name] = len(names)
            names.append(name)
        self.names = tuple(names)
        self.index_of = index_of
        self.allowed = frozenset(names)


def _record_index(value: Any, what: str) -> int:
    if type(value) is int:
        return value
    if issubclass(type(value), int):
        return int.__index__(value)
    raise bad_index(what, value)


def _column_of(key: Any, columns: _Columns) -> int:
    """The position of the column ``key`` names; -1 when it names none."""
    if type(key) is not str:
        if not issubclass(type(key), str):
            return -1
        key = str.__str__(key)
    return columns.index_of.get(key, -1)


def _plain(batch: tuple[Any, ...], columns: _Columns) -> bool:
    """Whether every record is a dict keyed by some of the columns, as exact strs.

    Such a batch is read without running any user code, so the order of
    reading does not matter: the caller may read it column by column.
    """
    return (
        all(map(is_, map(type, batch), repeat(dict)))
        and all(map(is_, map(type, chain.from_iterable(batch)), repeat(str)))
        and all(map(columns.allowed.issuperset, batch))
    )


def _dict_row(record: dict[Any, Any], index: int, columns: _Columns) -> tuple[Any, ...]:
    row = [_MISSING] * len(columns.names)
    for key, value in record.items():
        position = _column_of(key, columns)
        if position < 0:
            raise unknown_key(key, index, columns.names)
        if row[position] is not _MISSING:
            raise key_twice(columns.names[position], index)
        row[position] = value
    return tuple([None if value is _MISSING else value for value in row])


def _mapping_row(record: Mapping[Any, Any], index: int, columns: _Columns) -> tuple[Any, ...]:
    seen = [False] * len(columns.names)
    for key in record:
        position = _column_of(key, columns)
        if position < 0:
            raise unknown_key(key, index, columns.names)
        if seen[position]:
            raise key_twice(columns.names[position], index)
        seen[position] = True
    return tuple(map(record.get, columns.names))


def _row(record: Any, index: int, columns: _Columns) -> tuple[Any, ...]:
    kind = type(record)
    if kind is tuple or kind is list:
        values = record
    elif kind is dict:
        return _dict_row(record, index, columns)
    elif isinstance(record, Mapping):
        return _mapping_row(record, index, columns)
    elif issubclass(kind, _POSITIONAL):
        values = tuple(record)
    else:
        raise not_a_record(record, index)
    if len(values) != len(columns.names):
        raise wrong_length(len(values), index, len(columns.names))
    return tuple(values)


def keys_of(records: Sequence[object]) -> list[str]:
    """The first record's keys, in order: the columns when none are given (``[]`` if empty).

    A ``str`` subclass key is given as its ``str`` value.
    """
    if not records:
        return []
    first = records[0]
    if not isinstance(first, Mapping):
        raise not_a_record(first, 0)
    return [
        str.__str__(key) if type(key) is not str and issubclass(type(key), str) else key
        for key in first
    ]


def record_to_row(record: object, columns: Sequence[str], index: int = 0) -> tuple[Any, ...]:
    """One record as a tuple in ``columns`` order (for COPY); ``index`` is used in errors."""
    checked = _Columns(columns)
    return _row(record, _record_index(index, "index"), checked)


def records_to_rows(
    records: Iterable[object], columns: Sequence[str], start: int = 0
) -> list[tuple[Any, ...]]:
    """Every record as a tuple in ``columns`` order; record indexes in errors begin at ``start``."""
    checked = _Columns(columns)
    first = _record_index(start, "start")
    batch: tuple[Any, ...] = tuple(records)
    if _plain(batch, checked):
        names = checked.names
        return [tuple(map(record.get, names)) for record in batch]
    return [_row(record, index, checked) for index, record in enumerate(batch, first)]


def records_to_columns(records: Iterable[object], columns: Sequence[str]) -> list[list[Any]]:
    """One list per column holding that column's values in record order."""
    checked = _Columns(columns)
    batch: tuple[Any, ...] = tuple(records)
    if _plain(batch, checked):
        return [list(map(dict.get, batch, repeat(name))) for name in checked.names]
    return _transpose([_row(r, i, checked) for i, r in enumerate(batch)], len(checked.names))


def _transpose(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(values) for values in zip(*rows, strict=True)]


def tuples_to_columns(rows: Iterable[object], column_count: int) -> list[list[Any]]:
    """Transpose tuple/list rows of ``column_count`` values into one list per column."""
    if type(column_count) is not int or not 0 <= column_count <= MAX_COLUMNS:
        raise bad_count(column_count)
    checked: list[Sequence[Any]] = []
    row: Any
    for index, row in enumerate(tuple(rows)):
        kind = type(row)
        if kind is not tuple and kind is not list:
            if not issubclass(kind, _POSITIONAL):
                raise not_a_record(row, index)
            row = tuple(row)
        if len(row) != column_count:
            raise wrong_length(len(row), index, column_count)
        checked.append(row)
    return _transpose(checked, column_count)


def _size(value: object) -> int:
    if value is None:
        return 0
    if type(value) is str:
        # UTF-8 needs at most 4 bytes a character; ASCII exactly 1.
        return len(value) if value.isascii() else 4 * len(value)
    if type(value) is bytes or type(value) is bytearray:
        return 2 * len(value)  # hex digits in the text format
    return _FIXED_SIZE


def batch_ends(columns: Sequence[list[Any]], max_rows: int, max_bytes: int) -> list[int]:
    """End offsets splitting rows into batches of at most ``max_rows`` rows and about
    ``max_bytes`` bytes of parameters (a single larger row still gets its own batch)."""
    if type(max_rows) is not int or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, not {max_rows!r}")
    if type(max_bytes) is not int or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, not {max_bytes!r}")
    if not issubclass(type(columns), _POSITIONAL):
        raise TypeError("columns must be a list of per-column lists")
    lists = tuple(columns)
    if not all(type(c) is list for c in lists):
        raise TypeError("columns must be a list of per-column lists")
    if not lists:
        return []
    count = len(lists[0])
    if any(len(c) != count for c in lists):
        raise ValueError("all column lists must have the same length")
    ends: list[int] = []
    rows = 0
    used = 0
    for index, values in enumerate(zip(*lists, strict=True)):
        size = sum(_size(v) for v in values) + _ELEMENT_OVERHEAD * len(values)
        if rows and (rows == max_rows or used + size > max_bytes):
            ends.append(index)
            rows = 0
            used = 0
        rows += 1
        used += size
    if rows:
        ends.append(count)
    return ends


def array_literal(values: list[Any], default: Callable[[Any], str | None] | None) -> str | None:
    """``values`` as a PostgreSQL array literal (``{1,"a",NULL}``) for one text parameter.

    ``None`` is NULL; bool, int, float and str are written directly; any other
    value is written as ``default(value)``; when that is ``None`` (or there is
    no ``default``) the values cannot be written and the result is ``None``.
    The values are read from a snapshot taken first, whatever ``default`` does.
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    parts = ["{"]
    for index, value in enumerate(tuple(values)):
        if index:
            parts.append(",")
        kind = type(value)
        if value is None:
            parts.append("NULL")
        elif kind is bool:
            parts.append("t" if value else "f")
        elif kind is int:
            parts.append(str(value))
        elif kind is float:
            parts.append(repr(value))
        else:
            text = value if kind is str else None if default is None else default(value)
            if text is None:
                return None
            if type(text) is not str:
                raise TypeError(f"default() must return a str or None, not {type(text).__name__}")
            if '"' in text or "\\" in text:
                text = text.replace("\\", "\\\\").replace('"', '\\"')
            parts += ('"', text, '"')
    parts.append("}")
    return "".join(parts)


# struct code of each element type's values, and the types of value each holds.
_CODES = {"bool": "?", "int2": "h", "int4": "i", "int8": "q", "float8": "d"}
_HOLDS: dict[str, frozenset[type]] = {
    "bool": frozenset({bool, type(None)}),
    "int": frozenset({int, type(None)}),
    "float": frozenset({float, int, type(None)}),
}
# PostgreSQL's own NaN (what float8in makes of the text 'nan'): NaNs of any
# sign or payload are written as this one, exactly as the text path sends them.
_CANONICAL_NAN: float = struct.unpack("!d", bytes.fromhex("7ff8000000000000"))[0]


def binary_array(values: list[Any], element: str) -> bytes | None:
    """``values`` as a one-dimensional PostgreSQL array in binary format (``array_recv``)
    of ``element`` (a key of ``BINARY_ELEMENTS``), for one binary parameter.

    ``None`` is NULL. Only values that the element type holds exactly are
    written: bool for ``bool``, int in range for ``intN``, float and int for
    ``float8``; when any value is something else the result is ``None``.
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    if type(element) is not str and issubclass(type(element), str):
        element = str.__str__(element)
    spec = BINARY_ELEMENTS.get(element) if type(element) is str else None
    if spec is None:
        raise bad_element(element)
    oid, kind, width = spec
    if not _HOLDS[kind].issuperset(map(type, values)):
        return None
    present = [v for v in values if v is not None]
    if kind == "int" and present:
        bound = 1 << (8 * width - 1)
        if min(present) < -bound or max(present) >= bound:
            return None
    elif kind == "float":
        try:
            present = [_CANONICAL_NAN if v != v else float(v) for v in present]
        except OverflowError:
            return None
    if not values:
        return struct.pack("!iii", 0, 0, oid)
    header = struct.pack("!iiiii", 1, len(present) < len(values), oid, len(values), 1)
    pair = "i" + _CODES[element]
    if len(present) == len(values):
        codes = pair * len(values)
        args: Iterable[Any] = chain.from_iterable(zip(repeat(width), present))
    else:
        codes = "".join("i" if v is None else pair for v in values)
        items = iter(present)
        args = chain.from_iterable((-1,) if v is None else (width, next(items)) for v in values)
    return header + struct.pack("!" + codes, *args)
