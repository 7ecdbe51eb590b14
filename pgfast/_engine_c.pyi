"""Stub for the compiled engine; see ``pgfast._engine_py``."""

from typing import Any

__all__ = ["column_names", "load_rows"]

def column_names(result: Any, encoding: str) -> list[str]: ...
def load_rows(tx: Any, result: Any, dicts: bool, encoding: str) -> list[Any]: ...
