"""Error messages and constants of the ``_flatten`` twins, in one place so both agree.

Imported by ``pgfast._flatten_py`` and the compiled ``pgfast._flatten_c``; the
messages are used on their error paths only. None of them calls a method of a
``str`` subclass: such a name or key is shown by its ``str`` value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BINARY_ELEMENTS",
    "MAX_COLUMNS",
    "bad_count",
    "bad_element",
    "bad_index",
    "column_not_str",
    "column_twice",
    "columns_not_a_list",
    "key_twice",
    "not_a_record",
    "unknown_key",
    "wrong_length",
]

# Element types ``binary_array`` writes: name -> (type OID, kind, bytes per value).
BINARY_ELEMENTS: dict[str, tuple[int, str, int]] = {
    "bool": (16, "bool", 1),
    "int2": (21, "int", 2),
    "int4": (23, "int", 4),
    "int8": (20, "int", 8),
    "float8": (701, "float", 8),
}

# No PostgreSQL row has more columns (MaxTupleAttributeNumber): a larger
# ``column_count`` is a mistake, refused before anything is allocated for it.
MAX_COLUMNS = 1664


def _shown(key: Any) -> str:
    """``repr(key)``; a str subclass by its str value, a failing ``__repr__`` by type."""
    if issubclass(type(key), str):
        return repr(str.__str__(key))
    try:
        return repr(key)
    except Exception:  # a hostile __repr__ must not hide the error being reported
        return f"<{type(key).__name__} object>"


def not_a_record(record: object, index: int) -> TypeError:
    return TypeError(
        f"record {index} is of type {type(record).__name__}, "
        "not a mapping (dict) or a tuple/list of values"
    )


def unknown_key(key: object, index: int, columns: Sequence[str]) -> ValueError:
    if not issubclass(type(key), str):
        return ValueError(
            f"record {index} has key {_shown(key)} of type {type(key).__name__}: "
            f"keys must be column names (str), one of {list(columns)!r}"
        )
    return ValueError(
        f"record {index} has key {_shown(key)}, which is not one of the columns {list(columns)!r}"
    )


def key_twice(column: str, index: int) -> ValueError:
    return ValueError(
        f"record {index} has two keys for column {column!r} (a str subclass key counts "
        "as its str value)"
    )


def wrong_length(length: int, index: int, width: int) -> ValueError:
    return ValueError(f"record {index} has {length} values, expected {width} (one per column)")


def columns_not_a_list(columns: object) -> TypeError:
    return TypeError(f"columns must be a list of column names, not {type(columns).__name__}")


def column_not_str(name: object) -> TypeError:
    return TypeError(f"column names must be strings, not {type(name).__name__}: {_shown(name)}")


def column_twice(name: str) -> ValueError:
    return ValueError(f"column {name!r} is listed twice")


def bad_count(column_count: object) -> Exception:
    if type(column_count) is not int:
        return TypeError(f"column_count must be an int, not {type(column_count).__name__}")
    return ValueError(f"column_count must be between 0 and {MAX_COLUMNS}, not {column_count}")


def bad_index(what: str, value: object) -> TypeError:
    return TypeError(f"{what} must be an int (a record index), not {type(value).__name__}")


def bad_element(element: object) -> ValueError:
    return ValueError(f"element must be one of {sorted(BINARY_ELEMENTS)!r}, not {_shown(element)}")
