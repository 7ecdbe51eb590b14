"""Type stub of the compiled twin; see ``pgfast._flatten_py`` for the behaviour."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "array_literal",
    "batch_ends",
    "keys_of",
    "record_to_row",
    "records_to_columns",
    "records_to_rows",
    "tuples_to_columns",
]

def keys_of(records: Sequence[object]) -> list[str]: ...
def record_to_row(record: object, columns: Sequence[str], index: int = 0) -> tuple[Any, ...]: ...
def records_to_rows(
    records: Iterable[object], columns: Sequence[str], start: int = 0
) -> list[tuple[Any, ...]]: ...
def records_to_columns(records: Iterable[object], columns: Sequence[str]) -> list[list[Any]]: ...
def tuples_to_columns(rows: Iterable[object], column_count: int) -> list[list[Any]]: ...
def batch_ends(columns: Sequence[list[Any]], max_rows: int, max_bytes: int) -> list[int]: ...
def array_literal(values: list[Any], default: Callable[[Any], str | None] | None) -> str | None: ...
