"""Decide, once, whether pgfast's hot paths run compiled or pure.

Each hot path ``X`` has a compiled module ``pgfast.X_c`` (built from
``src/X_c.pyx``) and a pure-Python twin ``pgfast.X_py`` with the same names
and behaviour. The rest of the package takes them from here only, so one
process never mixes the two.

- ``PGFAST_NO_EXTENSIONS=1`` (or ``PGFAST_IMPL=python``) forces the pure twins.
- ``PGFAST_IMPL=cython`` makes a missing compiled module an ``ImportError``.
- Otherwise the compiled modules are used when all of them import.

Type checkers see the pure twins: each compiled module exports the same public
names (``__all__``) with the same behaviour, which the tests check.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["HOT_PATHS", "IMPL", "classify", "compose", "engine", "flatten", "selector"]

HOT_PATHS = ("_compose", "_classify", "_selector", "_flatten", "_engine")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _load(suffix: str) -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"pgfast.{name}{suffix}") for name in HOT_PATHS}


def _choose() -> tuple[str, dict[str, ModuleType]]:
    forced = os.environ.get("PGFAST_IMPL", "").strip().lower()
    if forced not in ("", "cython", "python"):
        raise ImportError(f"PGFAST_IMPL must be 'cython' or 'python', not {forced!r}")
    if _flag("PGFAST_NO_EXTENSIONS") or forced == "python":
        if forced == "cython":
            raise ImportError("PGFAST_IMPL=cython contradicts PGFAST_NO_EXTENSIONS=1")
        return "python", _load("_py")
    try:
        return "cython", _load("_c")
    except ImportError as exc:
        if forced == "cython":
            raise ImportError(
                f"PGFAST_IMPL=cython but a compiled module is missing ({exc}); "
                "reinstall pgfast with a C compiler available"
            ) from exc
        return "python", _load("_py")


IMPL, _MODULES = _choose()
if TYPE_CHECKING:
    # Either twin has these names and behaviour: the pure one gives the types.
    from . import _classify_py as classify
    from . import _compose_py as compose
    from . import _engine_py as engine
    from . import _flatten_py as flatten
    from . import _selector_py as selector
else:
    compose = _MODULES["_compose"]
    classify = _MODULES["_classify"]
    selector = _MODULES["_selector"]
    flatten = _MODULES["_flatten"]
    engine = _MODULES["_engine"]
