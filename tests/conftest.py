"""Shared fixtures: the compiled and pure twins, run by one suite.

Tests that take ``impl`` run once per implementation: with the compiled
extensions present they run for both ``cython`` and ``python``; with
``PGFAST_NO_EXTENSIONS=1`` only the pure twins are exercised. A compiled
module that fails to import is a test error, never a silent skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("PGFAST_NO_EXTENSIONS", "").strip() not in ("", "0")
IMPLS = ["python"] if NO_EXTENSIONS else ["cython", "python"]


def twin(hot_path: str, impl: str) -> ModuleType:
    """The ``impl`` ("cython" or "python") module of ``hot_path`` ("_compose", ...)."""
    suffix = "_c" if impl == "cython" else "_py"
    return importlib.import_module(f"pgfast.{hot_path}{suffix}")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)
