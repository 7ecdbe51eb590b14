"""Turn bulk-loading records into per-column lists or row tuples (pure twin).

The compiled twin ``pgfast._flatten_c`` has the same names and behaviour,
errors included; library code takes whichever ``pgfast._impl.flatten`` chose.

A *record* is a mapping (dict) from column name to value, or a tuple/list of
values in column order. A key missing from a mapping is ``None`` (NULL); a key
that is not a column is a ``ValueError`` naming the key and the record's
index, and a record of any other type is a ``TypeError`` naming its index.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any

from pgfast._flatten_messages import (
    BINARY_ELEMENTS,
    bad_columns,
    bad_count,
    bad_element,
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


def _checked_columns(columns: Sequence[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    if isinstance(columns, (list, tuple)):
        names = tuple(columns)
        allowed = frozenset(names)
        if len(allowed) == len(names) and all(type(name) is str for name in names):
            return names, allowed
    raise bad_columns(columns)


def _is_mapping(
    record: object, index: int, names: tuple[str, ...], allowed: frozenset[str]
) -> bool:
    """Whether ``record`` is a mapping (else a tuple/list); raise if it is not a valid record."""
    positional = type(record) is tuple or type(record) is list  # skips the slow Mapping check
    if not positional and (type(record) is dict or isinstance(record, Mapping)):
        if not allowed.issuperset(record):
            key = next(k for k in record if k not in allowed)
            raise unknown_key(key, index, names)
        return True
    if isinstance(record, (tuple, list)):
        if len(record) != len(names):
            raise wrong_length(len(record), index, len(names))
        return False
    raise not_a_record(record, index)


def _row(
    record: Any, index: int, names: tuple[str, ...], allowed: frozenset[str]
) -> tuple[Any, ...]:
    if _is_mapping(record, index, names, allowed):
        return tuple(map(record.get, names))
    return tuple(record)


def keys_of(records: Sequence[object]) -> list[str]:
    """The first record's keys, in order: the columns when none are given (``[]`` if empty)."""
    if not records:
        return []
    first = records[0]
    if not isinstance(first, Mapping):
        raise not_a_record(first, 0)
    return list(first)


def record_to_row(record: object, columns: Sequence[str], index: int = 0) -> tuple[Any, ...]:
    """One record as a tuple in ``columns`` order (for COPY); ``index`` is used in errors."""
    names, allowed = _checked_columns(columns)
    return _row(record, index, names, allowed)


def records_to_rows(
    records: Iterable[object], columns: Sequence[str], start: int = 0
) -> list[tuple[Any, ...]]:
    """Every record as a tuple in ``columns`` order; record indexes in errors begin at ``start``."""
    names, allowed = _checked_columns(columns)
    return [_row(record, index, names, allowed) for index, record in enumerate(records, start)]


def records_to_columns(records: Iterable[object], columns: Sequence[str]) -> list[list[Any]]:
    """One list per column holding that column's values in record order."""
    names, allowed = _checked_columns(columns)
    batch: list[Any] = records if isinstance(records, list) else list(records)
    kinds = [_is_mapping(record, index, names, allowed) for index, record in enumerate(batch)]
    if all(kinds):
        return [[record.get(name) for record in batch] for name in names]
    return tuples_to_columns([_row(r, i, names, allowed) for i, r in enumerate(batch)], len(names))


def tuples_to_columns(rows: Iterable[object], column_count: int) -> list[list[Any]]:
    """Transpose tuple/list rows of ``column_count`` values into one list per column."""
    if type(column_count) is not int or column_count < 0:
        raise bad_count(column_count)
    checked: list[tuple[Any, ...] | list[Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, (tuple, list)):
            raise not_a_record(row, index)
        if len(row) != column_count:
            raise wrong_length(len(row), index, column_count)
        checked.append(row)
    if not checked:
        return [[] for _ in range(column_count)]
    return [list(values) for values in zip(*checked, strict=True)]


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
    if not isinstance(columns, (list, tuple)) or not all(type(c) is list for c in columns):
        raise TypeError("columns must be a list of per-column lists")
    if not columns:
        return []
    count = len(columns[0])
    if any(len(c) != count for c in columns):
        raise ValueError("all column lists must have the same length")
    ends: list[int] = []
    rows = 0
    used = 0
    for index, values in enumerate(zip(*columns, strict=True)):
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
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    parts = ["{"]
    for index, value in enumerate(values):
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
