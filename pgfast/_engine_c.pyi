"""Stub for the compiled engine; see ``pgfast._engine_py``."""

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["column_names", "load_rows", "read_results"]

def read_results(pgconn: Any, entries: deque[Any], finish: Callable[[Any], None]) -> None: ...
def column_names(result: Any, encoding: str) -> list[str]: ...
def load_rows(tx: Any, result: Any, dicts: bool, encoding: str) -> list[Any]: ...
