"""Pool options and connection-string resolution (no I/O).

``resolve_config`` turns the arguments of ``create_pool`` / ``create_async_pool``
into a ``PoolConfig``: the libpq connection string to use, the keyword
arguments for every new connection (session settings travel in libpq's
``options`` so they cost no round trip), the validated pool options, and the
secrets (passwords) that must never appear in a repr, a message or a log line.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ._exceptions import ConfigurationError

REDACTED = "********"

# Environment variables read by libpq itself: when one of them is set, an empty
# connection string is a meaningful one.
LIBPQ_ENV_VARS = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
    "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGAPPNAME",
    "PGSSLMODE", "PGREQUIRESSL", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT",
    "PGSSLCRL", "PGGSSENCMODE", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING",
    "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGREQUIREAUTH",
    "PGCHANNELBINDING",
)  # fmt: skip

_NO_CONNECTION_STRING = (
    "pgfast does not know which database to connect to. Either pass a connection "
    'string, e.g. create_pool("postgresql://user@host:5432/dbname") or '
    'create_pool(os.environ["MY_DB_URL"]), or set the DATABASE_URL environment '
    "variable (or the libpq PGHOST/PGUSER/PGDATABASE/... variables)."
)

Hook = Callable[..., Any] | None
PasswordSource = str | Callable[[], str] | Callable[[], Awaitable[str]] | None
# Passwords a callable returned recently, still redacted from messages: a
# connection opened with an older token may fail (and be reported) later.
PASSWORD_HISTORY = 64

_HOOKS = (
    "on_connection_opened",
    "on_connection_closed",
    "on_query_start",
    "on_query_results",
    "on_query_error",
    "on_error",
)
_SECONDS_OR_NONE = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


@dataclass(frozen=True)
class PoolOptions:
    """The keyword options of ``create_pool`` (API.md §2), validated."""

    pool_size: int = 10
    min_size: int = 0
    queue_timeout: float = 60.0
    connect_timeout: float = 10.0
    idle_timeout: float | None = 30.0
    max_lifetime: float = 3600.0
    max_uses: int | None = None
    application_name: str | None = None
    schema: str | list[str] | None = None
    statement_timeout: float | None = None
    lock_timeout: float | None = None
    idle_in_transaction_session_timeout: float | None = None
    row_type: str = "dict"
    password: PasswordSource = field(default=None, repr=False)
    on_connection_opened: Hook = None
    on_connection_closed: Hook = None
    on_query_start: Hook = None
    on_query_results: Hook = None
    on_query_error: Hook = None
    on_error: Hook = None


OPTION_NAMES = frozenset(PoolOptions.__dataclass_fields__)


@dataclass(repr=False)
class PoolConfig:
    """Everything a pool needs to open connections.

    ``secrets`` (the passwords to redact) is an immutable snapshot, replaced
    atomically when a password callable returns a new value, so it can be
    read from any thread without a lock.
    """

    conninfo: str
    connect_kwargs: dict[str, Any]
    options: PoolOptions
    display: str
    secrets: frozenset[str] = frozenset()
    _static: frozenset[str] = field(init=False)
    _recent: deque[str] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.secrets = self._static = frozenset(self.secrets)
        self._recent = deque(maxlen=PASSWORD_HISTORY)

    def __repr__(self) -> str:
        return f"<pgfast.PoolConfig {self.display!r} {self.options!r}>"

    def kwargs_with_password(self, value: object) -> dict[str, Any]:
        """Connection kwargs with ``value``, what the password callable returned."""
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: no RuntimeWarning
            raise ConfigurationError(
                "the password callable returned an awaitable: an async password "
                "callable works only with create_async_pool"
            )
        if not isinstance(value, str):
            raise ConfigurationError(
                f"the password callable must return a str, not {type(value).__name__}"
            )
        if value and value not in self.secrets:
            with self._lock:
                self._recent.append(value)
                self.secrets = self._static.union(self._recent)
        return {**self.connect_kwargs, "password": value}

    def redact(self, text: str) -> str:
        """``text`` with every known password replaced."""
        return redact_secrets(text, self.secrets)


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (and its URL-encoded form) in ``text``."""
    from urllib.parse import quote

    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
            quoted = quote(secret, safe="")
            if quoted != secret:
                text = text.replace(quoted, REDACTED)
    return text


def check_seconds(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


def validate_options(options: Mapping[str, Any], caller: str = "create_pool") -> PoolOptions:
    """Check names, types and ranges of pool options; return them as ``PoolOptions``."""
    for name in options:
        if name not in OPTION_NAMES:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    opts = PoolOptions(**options)
    for name in ("pool_size", "min_size"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, not {value!r}")
    if opts.pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, not {opts.pool_size}")
    if opts.min_size > opts.pool_size:
        raise ValueError(f"min_size ({opts.min_size}) must not exceed pool_size ({opts.pool_size})")
    for name in ("queue_timeout", "connect_timeout", "max_lifetime"):
        check_seconds(name, getattr(opts, name), allow_none=False)
    for name in ("idle_timeout", *_SECONDS_OR_NONE):
        check_seconds(name, getattr(opts, name), allow_none=True)
    if opts.max_uses is not None and (
        isinstance(opts.max_uses, bool) or not isinstance(opts.max_uses, int) or opts.max_uses < 1
    ):
        raise ValueError(f"max_uses must be an int >= 1 or None, not {opts.max_uses!r}")
    if opts.row_type not in ("dict", "tuple"):
        raise ValueError(f"row_type must be 'dict' or 'tuple', not {opts.row_type!r}")
    if opts.application_name is not None and not isinstance(opts.application_name, str):
        raise TypeError(
            f"application_name must be a str, not {type(opts.application_name).__name__}"
        )
    if opts.schema is not None:
        names = [opts.schema] if isinstance(opts.schema, str) else opts.schema
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise TypeError(f"schema must be a non-empty str or list of str, not {opts.schema!r}")
    password = opts.password
    if password is not None and not (isinstance(password, str) or callable(password)):
        raise TypeError(
            f"password must be a str or a callable returning one, "
            f"not {type(opts.password).__name__}"
        )
    for name in _HOOKS:
        hook = getattr(opts, name)
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
    return opts


def _quote_ident(name: str) -> str:
    if "\x00" in name:
        raise ValueError("schema names cannot contain NUL characters")
    return '"' + name.replace('"', '""') + '"'


def _escape_option_value(value: str) -> str:
    # libpq's ``options`` splits on whitespace; a backslash escapes the next char.
    return re.sub(r"([\s\\])", r"\\\1", value)


def millis(seconds: float) -> str:
    return str(math.ceil(seconds * 1000))


def session_settings(opts: PoolOptions) -> dict[str, str]:
    """The server settings each connection starts with."""
    settings: dict[str, str] = {}
    if opts.schema is not None:
        names = [opts.schema] if isinstance(opts.schema, str) else opts.schema
        settings["search_path"] = ",".join(_quote_ident(n) for n in names)
    for name in _SECONDS_OR_NONE:
        seconds = getattr(opts, name)
        if seconds is not None:
            settings[name] = millis(seconds)
    return settings


def _is_secret_key(key: str) -> bool:
    # password, sslpassword (the sslkey passphrase) and whatever libpq adds later.
    return "password" in key or "passphrase" in key


def _describe(params: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if not _is_secret_key(k) and v not in (None, "")}
    return make_conninfo("", **shown)


# Connection options whose values libpq checks only when connecting: a bad one
# would fail every attempt of the pool's background worker, forever.
_INTEGER_OPTIONS = (
    "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout",
)  # fmt: skip
_CHOICE_OPTIONS = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
}  # fmt: skip
_OPTION_ENV_VARS = {
    "port": "PGPORT",
    "sslmode": "PGSSLMODE",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


def _option_problem(key: str, value: str) -> str | None:
    """Why libpq would refuse ``key=value``, or ``None``."""
    if key == "port":
        for port in value.split(","):
            port = port.strip()
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                return "must be a port number from 1 to 65535 (or a comma-separated list of them)"
    elif key in _INTEGER_OPTIONS:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return "must be an integer"
    elif key in _CHOICE_OPTIONS and value not in _CHOICE_OPTIONS[key]:
        return "must be one of " + ", ".join(_CHOICE_OPTIONS[key])
    return None


def check_connection_options(params: Mapping[str, Any]) -> None:
    """Refuse option values libpq would refuse at every connection attempt."""
    for key in ("port", *_INTEGER_OPTIONS, *_CHOICE_OPTIONS):
        value = params.get(key)
        source = f"connection option {key}"
        if value is None and key in _OPTION_ENV_VARS:
            value = os.environ.get(_OPTION_ENV_VARS[key]) or None
            source = f"environment variable {_OPTION_ENV_VARS[key]}"
        if value is None:
            continue
        problem = _option_problem(key, str(value))
        if problem is not None:
            raise ConfigurationError(f"invalid {source}={str(value)!r}: it {problem}")


def resolve_config(
    connection_string: str | None, options: Mapping[str, Any], caller: str = "create_pool"
) -> PoolConfig:
    """Resolve a connection string (or the environment) and options into a ``PoolConfig``."""
    opts = validate_options(options, caller)
    if connection_string is None:
        env_url = os.environ.get("DATABASE_URL")
        if env_url:
            connection_string = env_url
        elif any(os.environ.get(v) for v in LIBPQ_ENV_VARS):
            connection_string = ""
        else:
            raise ConfigurationError(_NO_CONNECTION_STRING)
    elif not isinstance(connection_string, str):
        raise TypeError(
            f"the connection string must be a str, not {type(connection_string).__name__}"
        )

    secrets: set[str] = set()
    if isinstance(opts.password, str) and opts.password:
        secrets.add(opts.password)
    try:
        params = conninfo_to_dict(connection_string)
    except psycopg.Error as exc:
        secrets.update(_password_candidates(connection_string))
        raise ConfigurationError(
            redact_secrets(f"invalid connection string: {exc}", secrets)
        ) from None
    secrets.update(str(v) for k, v in params.items() if _is_secret_key(k) and v)

    kwargs: dict[str, Any] = {"autocommit": True}
    if isinstance(opts.password, str):
        kwargs["password"] = opts.password
    if opts.application_name is not None:
        kwargs["application_name"] = opts.application_name
    kwargs["connect_timeout"] = max(1, math.ceil(opts.connect_timeout))
    settings = session_settings(opts)
    if settings:
        extra = " ".join(f"-c {k}={_escape_option_value(v)}" for k, v in settings.items())
        existing = params.get("options")
        kwargs["options"] = f"{existing} {extra}" if existing else extra
    try:
        check_connection_options(conninfo_to_dict(connection_string, **kwargs))
    except ConfigurationError as exc:
        raise ConfigurationError(redact_secrets(str(exc), secrets)) from None

    return PoolConfig(
        conninfo=connection_string,
        connect_kwargs=kwargs,
        options=opts,
        display=_describe(params),
        secrets=frozenset(secrets),
    )


def _password_candidates(connection_string: str) -> list[str]:
    """Best-effort passwords of a string libpq could not parse, to redact them."""
    found = re.findall(r"://[^:/@\s]*:([^@\s]*)@", connection_string)
    found += re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", connection_string)
    return [f.strip("'") for f in found if f]
