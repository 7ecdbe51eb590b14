"""``pgfast.errors``: every error class a user may catch, and nothing else."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest

import pgfast
import pgfast.errors
from pgfast import _exceptions

pytestmark = pytest.mark.nodb


def test_every_exported_name_is_an_exception_class() -> None:
    for name in pgfast.errors.__all__:
        value = getattr(pgfast.errors, name)
        assert isinstance(value, type) and issubclass(value, BaseException), name


def test_public_names_are_the_exported_ones_and_lookup() -> None:
    # pgfast is a pytest plugin, so pytest rewrote this module's asserts and
    # added "@py_..." names: identifiers only.
    public = {n for n in vars(pgfast.errors) if n.isidentifier() and not n.startswith("_")}
    assert public == {*pgfast.errors.__all__, "lookup"}
    assert pgfast.errors.lookup("40001") is psycopg.errors.SerializationFailure


@pytest.mark.parametrize("name", ["Any", "dataclass", "CancelledError", "Diagnostic", "psycopg"])
def test_names_that_are_not_errors_are_absent(name: str) -> None:
    assert name not in pgfast.errors.__all__
    assert not hasattr(pgfast.errors, name)


@pytest.mark.parametrize(
    "name",
    [
        "UniqueViolation",
        "ForeignKeyViolation",
        "CheckViolation",
        "NotNullViolation",
        "SerializationFailure",
        "DeadlockDetected",
        "LockNotAvailable",
        "QueryCanceled",
        "AdminShutdown",
        "UndefinedTable",
        "SyntaxError",
        "StringDataRightTruncation",
        "DatabaseError",
        "IntegrityError",
        "OperationalError",
        "InterfaceError",
        "Warning",
    ],
)
def test_psycopg_classes_are_psycopgs_own(name: str) -> None:
    assert name in pgfast.errors.__all__
    assert getattr(pgfast.errors, name) is getattr(psycopg.errors, name)


def test_every_psycopg_error_class_is_exported() -> None:
    roots = (psycopg.Error, psycopg.Warning)
    for name, value in vars(psycopg.errors).items():
        if isinstance(value, type) and issubclass(value, roots) and not name.startswith("_"):
            assert name in pgfast.errors.__all__, name


def test_pgfasts_own_classes_are_the_ones_in_pgfast() -> None:
    own = {
        name: value
        for name, value in vars(_exceptions).items()
        if isinstance(value, type) and issubclass(value, pgfast.Error)
    }
    assert "QueryTimeoutCommitUnknownError" in own
    for name, value in own.items():
        assert getattr(pgfast.errors, name) is value, name
        if name in pgfast.__all__:
            assert getattr(pgfast, name) is value, name


def test_error_is_pgfasts_base_class_not_psycopgs() -> None:
    assert pgfast.errors.Error is pgfast.Error
    assert not issubclass(pgfast.errors.DatabaseError, pgfast.errors.Error)
    assert not issubclass(pgfast.PoolTimeoutError, psycopg.Error)
