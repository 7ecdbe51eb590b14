"""Error messages and constants of the ``_flatten`` twins, in one place so both agree.

Imported by ``pgfast._flatten_py`` and the compiled ``pgfast._flatten_c``; the
messages are used on their error paths only.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BINARY_ELEMENTS",
    "bad_columns",
    "bad_count",
    "bad_element",
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


def not_a_record(record: object, index: int) -> TypeError:
    return TypeError(
        f"record {index} is of type {type(record).__name__}, "
        "not a mapping (dict) or a tuple/list of values"
    )


def unknown_key(key: object, index: int, columns: Sequence[str]) -> ValueError:
    return ValueError(
        f"record {index} has key {key!r}, which is not one of the columns {list(columns)!r}"
    )


def wrong_length(length: int, index: int, width: int) -> ValueError:
    return ValueError(f"record {index} has {length} values, expected {width} (one per column)")


def bad_columns(columns: object) -> Exception:
    """The error for a ``columns`` argument that is not a list of distinct strings."""
    if not isinstance(columns, (list, tuple)):
        return TypeError(f"columns must be a list of column names, not {type(columns).__name__}")
    seen: set[object] = set()
    for name in columns:
        if not isinstance(name, str):
            return TypeError(f"column names must be strings, not {type(name).__name__}: {name!r}")
        if name in seen:
            return ValueError(f"column {name!r} is listed twice")
        seen.add(name)
    return ValueError(f"invalid columns {columns!r}")


def bad_count(column_count: object) -> Exception:
    if type(column_count) is not int:
        return TypeError(f"column_count must be an int, not {type(column_count).__name__}")
    return ValueError(f"column_count must be >= 0, not {column_count}")


def bad_element(element: object) -> ValueError:
    return ValueError(f"element must be one of {sorted(BINARY_ELEMENTS)!r}, not {element!r}")
