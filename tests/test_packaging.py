"""What an installed pgfast must be, whether from a wheel, an sdist or an editable checkout.

These run in the wheel tests too (cibuildwheel, ``tools/check_wheel.sh``), against the installed
wheel with ``PGFAST_IMPL=cython``: a wheel whose compiled modules are missing fails here.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pgfast
from pgfast import _impl

pytestmark = pytest.mark.nodb

IMPL_VARIABLES = ("PGFAST_IMPL", "PGFAST_NO_EXTENSIONS")
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _compiled_available() -> bool:
    for hot_path in _impl.HOT_PATHS:
        spec = importlib.util.find_spec(f"pgfast.{hot_path}_c")
        if spec is None or not str(spec.origin).endswith(EXTENSION_SUFFIXES):
            return False
    return True


def _import_in_subprocess(**variables: str) -> subprocess.CompletedProcess[str]:
    """Import pgfast in a new interpreter with only ``variables`` as implementation switches."""
    env = {k: v for k, v in os.environ.items() if k not in IMPL_VARIABLES}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-c", "import pgfast; print(pgfast.__impl__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_requested_implementation_is_in_use() -> None:
    forced = os.environ.get("PGFAST_IMPL", "").strip().lower()
    if forced:
        assert pgfast.__impl__ == forced
    assert pgfast.__impl__ in ("cython", "python")


def test_every_hot_path_comes_from_the_chosen_implementation() -> None:
    suffixes = EXTENSION_SUFFIXES if pgfast.__impl__ == "cython" else (".py",)
    module_suffix = "_c" if pgfast.__impl__ == "cython" else "_py"
    for hot_path in _impl.HOT_PATHS:
        module = getattr(_impl, hot_path.lstrip("_"))
        assert module.__name__ == f"pgfast.{hot_path}{module_suffix}"
        assert str(module.__file__).endswith(suffixes), module.__file__


@pytest.mark.parametrize("hot_path", _impl.HOT_PATHS)
def test_compiled_twin_exports_the_pure_twins_names(hot_path: str) -> None:
    """Type checkers see only the pure twin (``pgfast._impl``): the compiled one must match it."""
    if not _compiled_available():
        pytest.skip("the compiled modules are not installed")
    pure = importlib.import_module(f"pgfast.{hot_path}_py")
    compiled = importlib.import_module(f"pgfast.{hot_path}_c")
    assert compiled.__all__ == pure.__all__
    for module in (pure, compiled):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__} lacks {missing}"


@pytest.mark.parametrize("variables", [{"PGFAST_IMPL": "python"}, {"PGFAST_NO_EXTENSIONS": "1"}])
def test_pure_python_can_be_forced(variables: dict[str, str]) -> None:
    result = _import_in_subprocess(**variables)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"


def test_compiled_modules_are_preferred_when_installed() -> None:
    result = _import_in_subprocess()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("cython" if _compiled_available() else "python")


@pytest.mark.parametrize("variables", [{"PGFAST_IMPL": "cython"}, {"PGFAST_IMPL": " Cython "}])
def test_forced_cython_never_falls_back(variables: dict[str, str]) -> None:
    result = _import_in_subprocess(**variables, PGFAST_NO_EXTENSIONS="0")
    if _compiled_available():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "cython"
    else:
        assert result.returncode != 0
        assert "PGFAST_IMPL=cython but a compiled module is missing" in result.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PGFAST_IMPL": "fast"}, "PGFAST_IMPL must be 'cython' or 'python'"),
        ({"PGFAST_IMPL": "cython", "PGFAST_NO_EXTENSIONS": "1"}, "contradicts"),
    ],
)
def test_bad_implementation_switches_are_named(variables: dict[str, str], message: str) -> None:
    result = _import_in_subprocess(**variables)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert message in result.stderr


def test_distribution_metadata_matches_the_package() -> None:
    assert importlib.metadata.version("pgfast") == pgfast.__version__
    assert Path(pgfast.__file__).with_name("py.typed").is_file()


def test_entry_points_are_registered() -> None:
    entry_points = importlib.metadata.distribution("pgfast").entry_points
    by_group = {(ep.group, ep.name): ep.value for ep in entry_points}
    assert by_group[("console_scripts", "pgfast")] == "pgfast.cli:main"
    assert by_group[("pytest11", "pgfast")] == "pgfast.testing.pytest_plugin"
