"""Every error class a pgfast user may catch: psycopg's and pgfast's own.

- psycopg's, the same objects as in ``psycopg.errors``: one class per SQLSTATE
  (``UniqueViolation``, ``SerializationFailure``, ...; ``lookup(sqlstate)``
  finds one by its code), their DB-API groups (``DatabaseError``,
  ``IntegrityError``, ``OperationalError``, ...), ``InterfaceError`` and
  ``Warning``;
- pgfast's own, the same objects as in ``pgfast``: ``Error`` and its
  subclasses (``PoolTimeoutError``, ``CommitUnknownError``, ...).

So ``pgfast.errors.Error`` is ``pgfast.Error``, the base of the errors pgfast
raises itself; psycopg's base class is ``psycopg.Error``. docs/errors.md says
which class to catch for what.
"""

# Helpers are imported under private names: this module's public names are
# its error classes and ``lookup``.
import types as _types
import typing as _typing

import psycopg as _psycopg
import psycopg.errors as _psycopg_errors
from psycopg.errors import lookup as lookup

from . import _exceptions
from ._exceptions import CommitUnknownError as CommitUnknownError
from ._exceptions import ConfigurationError as ConfigurationError
from ._exceptions import Error as Error
from ._exceptions import NoPrimaryError as NoPrimaryError
from ._exceptions import PoolClosedError as PoolClosedError
from ._exceptions import PoolTimeoutError as PoolTimeoutError
from ._exceptions import PostCommitError as PostCommitError
from ._exceptions import QueryTimeoutCommitUnknownError as QueryTimeoutCommitUnknownError
from ._exceptions import QueryTimeoutError as QueryTimeoutError

if _typing.TYPE_CHECKING:
    # What ``globals().update`` below binds, for type checkers, which cannot
    # follow it (they also see psycopg.errors' few public helpers, such as
    # ``Diagnostic``, which are not bound here). The ignored clash is psycopg's
    # ``Error``: the one imported above is kept.
    from psycopg.errors import *  # type: ignore[assignment]  # noqa: F403


def _error_classes(
    module: _types.ModuleType, bases: tuple[type[BaseException], ...]
) -> dict[str, type[BaseException]]:
    """The public names of ``module`` bound to subclasses of ``bases``."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, type) and issubclass(value, bases)
    }


_PGFAST_ERRORS = _error_classes(_exceptions, (Error,))
# Computed rather than listed: the SQLSTATE classes vary with the psycopg
# version. psycopg.errors also binds helpers and names it imported (``Any``,
# ``dataclass``, asyncio's ``CancelledError``), which the two DB-API roots leave
# out; a name pgfast defines too (``Error``) stays pgfast's.
_PSYCOPG_ERRORS = {
    name: value
    for name, value in _error_classes(_psycopg_errors, (_psycopg.Error, _psycopg.Warning)).items()
    if name not in _PGFAST_ERRORS
}
globals().update(_PSYCOPG_ERRORS)

__all__ = sorted([*_PSYCOPG_ERRORS, *_PGFAST_ERRORS])
