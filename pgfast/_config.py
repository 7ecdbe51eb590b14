"""Pool options and connection-string resolution (no I/O).

``resolve_config`` turns the arguments of ``create_pool`` / ``create_async_pool``
into a ``PoolConfig``: the libpq connection string to use (without pgfast's own
options, which libpq would refuse), the keyword arguments for every new
connection (session settings travel in libpq's ``options`` so they cost no
round trip; TCP keepalives), the validated pool options with the string's
values merged in, and the secrets (passwords) that must never appear in a
repr, a message or a log line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict
from urllib.parse import unquote

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo

from ._exceptions import ConfigurationError
from ._sql import SQLQuery

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


class _CommonPoolOptions(TypedDict, total=False):
    pool_size: int
    min_size: int
    queue_timeout: float
    connect_timeout: float
    idle_timeout: float | None
    max_lifetime: float
    max_uses: int | None
    application_name: str | None
    schema: str | list[str] | None
    statement_timeout: float | None
    lock_timeout: float | None
    idle_in_transaction_session_timeout: float | None
    row_type: Literal["dict", "tuple"]
    on_connection_opened: Callable[[], object] | None
    on_connection_closed: Callable[[], object] | None
    on_query_start: Callable[[SQLQuery, str, list[Any]], object] | None
    on_query_results: Callable[[SQLQuery, str, list[Any], list[Any]], object] | None
    on_query_error: Callable[[SQLQuery, str, list[Any], Exception], object] | None
    on_error: Callable[[Exception], object] | None
    prepare_threshold: int | None
    query_timeout: float | None
    pipeline: bool


class PoolOptions(_CommonPoolOptions, total=False):
    """The keyword options of ``create_pool`` (docs/connecting.md lists them)."""

    password: str | Callable[[], str] | None
    configure: Callable[[psycopg.Connection[Any]], object] | None


class AsyncPoolOptions(_CommonPoolOptions, total=False):
    """The keyword options of ``create_async_pool``: ``password`` and ``configure``
    may be ``async def`` functions."""

    password: str | Callable[[], str] | Callable[[], Awaitable[str]] | None
    configure: Callable[[psycopg.AsyncConnection[Any]], object] | None


@dataclass(frozen=True)
class ResolvedOptions:
    """The pool options, validated, with the connection string's own values merged in.

    ``connect_timeout`` is the timeout each connection attempt really gets
    (whole seconds, at least 2, as libpq and psycopg apply it).
    """

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
    row_type: Literal["dict", "tuple"] = "dict"
    password: PasswordSource = field(default=None, repr=False)
    on_connection_opened: Hook = None
    on_connection_closed: Hook = None
    on_query_start: Hook = None
    on_query_results: Hook = None
    on_query_error: Hook = None
    on_error: Hook = None
    prepare_threshold: int | None = 5
    query_timeout: float | None = None
    configure: Hook = None
    pipeline: bool = True


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ResolvedOptions))


@dataclass(repr=False)
class PoolConfig:
    """Everything a pool needs to open connections.

    ``conninfo`` is the connection string without pgfast's own options (libpq
    refuses them).

    ``secrets`` (the passwords to redact) is an immutable snapshot, replaced
    atomically when a password callable returns a new value, so it can be
    read from any thread without a lock.
    """

    conninfo: str
    connect_kwargs: dict[str, Any]
    options: ResolvedOptions
    display: str
    secrets: frozenset[str] = frozenset()
    _static: frozenset[str] = field(init=False)
    _recent: deque[str] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.secrets = self._static = frozenset(self.secrets)
        self._recent = deque(maxlen=PASSWORD_HISTORY)

    @property
    def connect_timeout(self) -> float:
        """The seconds each connection attempt really gets."""
        return self.options.connect_timeout

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


def _check_int(name: str, value: Any, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        alternative = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{alternative}, not {value!r}")


def validate_options(options: Mapping[str, Any], caller: str = "create_pool") -> ResolvedOptions:
    """Check names, types and ranges of pool options; return them as ``ResolvedOptions``."""
    for name in options:
        if name not in OPTION_NAMES:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    opts = ResolvedOptions(**options)
    _check_int("pool_size", opts.pool_size, 1, allow_none=False)
    _check_int("min_size", opts.min_size, 0, allow_none=False)
    if opts.min_size > opts.pool_size:
        raise ValueError(f"min_size ({opts.min_size}) must not exceed pool_size ({opts.pool_size})")
    for name in ("queue_timeout", "connect_timeout", "max_lifetime"):
        check_seconds(name, getattr(opts, name), allow_none=False)
    for name in ("idle_timeout", *_SECONDS_OR_NONE):
        check_seconds(name, getattr(opts, name), allow_none=True)
    _check_int("max_uses", opts.max_uses, 1, allow_none=True)
    _check_int("prepare_threshold", opts.prepare_threshold, 0, allow_none=True)
    timeout = opts.query_timeout
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf
    ):
        raise ValueError(f"query_timeout must be a number of seconds > 0 or None, not {timeout!r}")
    if not isinstance(opts.pipeline, bool):
        raise TypeError(f"pipeline must be True or False, not {opts.pipeline!r}")
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
    for name in (*_HOOKS, "configure"):
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


def session_settings(opts: ResolvedOptions) -> dict[str, str]:
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


# -- the connection string, as libpq reads it ---------------------------------

URI_PREFIXES = ("postgresql://", "postgres://")
# C's isspace() in the "C" locale: what libpq's key=value parser treats as blank.
_BLANKS = frozenset(" \t\n\v\f\r")
# pgfast's own options, also accepted in the connection string (libpq would
# refuse them, so they are taken out before libpq sees the string).
STRING_OPTIONS = ("prepare_threshold", "query_timeout")


@dataclass(frozen=True)
class _Pair:
    """One ``key=value`` of a key=value string, with where it lies in the string."""

    key: str
    value: str  # unquoted and unescaped, as libpq reads it
    start: int  # the key's first character
    end: int  # just past the value (and its closing quote)


def _read_value(s: str, i: int) -> tuple[str, int] | None:
    """libpq's value at ``s[i:]`` (quoted or not) and where it ends; None if unterminated."""
    n = len(s)
    chars: list[str] = []
    if i < n and s[i] == "'":
        i += 1
        while True:
            if i >= n:
                return None
            c = s[i]
            if c == "\\":
                if i + 1 < n:
                    chars.append(s[i + 1])
                i += 2
            elif c == "'":
                return "".join(chars), i + 1
            else:
                chars.append(c)
                i += 1
    while i < n and s[i] not in _BLANKS:
        if s[i] == "\\":
            if i + 1 < n:
                chars.append(s[i + 1])
            i += 2
        else:
            chars.append(s[i])
            i += 1
    return "".join(chars), min(i, n)


def parse_keyword_value(s: str) -> list[_Pair] | None:
    """The pairs of a libpq key=value string, read as libpq's ``conninfo_parse``
    reads them; None when libpq would refuse its syntax (libpq then says why)."""
    pairs: list[_Pair] = []
    n = len(s)
    i = 0
    while i < n:
        if s[i] in _BLANKS:
            i += 1
            continue
        start = i
        while i < n and s[i] != "=" and s[i] not in _BLANKS:
            i += 1
        key = s[start:i]
        while i < n and s[i] in _BLANKS:  # "key = value" is allowed
            i += 1
        if i >= n or s[i] != "=":
            return None
        i += 1
        while i < n and s[i] in _BLANKS:
            i += 1
        read = _read_value(s, i)
        if read is None:
            return None
        value, i = read
        pairs.append(_Pair(key, value, start, i))
    return pairs


def _uri_decode(s: str) -> str | None:
    """libpq's percent-decoding; None for a malformed ``%`` escape or ``%00``."""
    if re.search(r"%(?![0-9A-Fa-f]{2})|%00", s):
        return None
    return unquote(s, errors="replace")


def _uri_parts(uri: str) -> tuple[int, int]:
    """Where the hosts begin (after ``user:password@``) and the query's ``?`` (or the end).

    As libpq: the user and password end at the first ``@`` or ``/``; then the
    first ``?`` starts the query.
    """
    begin = len(next(p for p in URI_PREFIXES if uri.startswith(p)))
    match = re.compile(r"[@/]").search(uri, begin)
    if match and match.group() == "@":
        begin = match.end()
    query = uri.find("?", begin)
    return begin, len(uri) if query < 0 else query


def split_string_options(conninfo: str) -> tuple[str, dict[str, str | None]]:
    """``conninfo`` without pgfast's own options, and their values (decoded).

    Everything else is kept as written, character for character. A value is
    None when a URI gives the name without ``=``. A string libpq would refuse
    is returned unchanged: libpq then says what is wrong with it.
    """
    found: dict[str, str | None] = {}
    if conninfo.startswith(URI_PREFIXES):
        _, query = _uri_parts(conninfo)
        if query == len(conninfo):
            return conninfo, found
        kept: list[str] = []
        for part in conninfo[query + 1 :].split("&"):
            raw_key, eq, raw_value = part.partition("=")
            key = _uri_decode(raw_key)
            if key not in STRING_OPTIONS:
                kept.append(part)
            elif not eq:
                found[key] = None
            else:
                value = _uri_decode(raw_value)
                if value is None:
                    raise ConfigurationError(
                        f"invalid {key} in the connection string: malformed percent-encoding"
                    )
                found[key] = value
        if not found:
            return conninfo, found
        rest = "&".join(kept)
        return conninfo[:query] + ("?" + rest if any(kept) else ""), found
    pairs = parse_keyword_value(conninfo)
    if pairs is None:
        return conninfo, found
    for pair in reversed(pairs):  # the last one wins, as in libpq; cut from the end
        if pair.key in STRING_OPTIONS:
            found.setdefault(pair.key, pair.value)
            conninfo = conninfo[: pair.start] + conninfo[pair.end :]
    return conninfo, found


def _string_option(name: str, raw: str | None, scrub: _Scrubber) -> int | float | None:
    """The value of pgfast's option ``name`` written in the connection string."""
    text = (raw or "").strip()
    if raw is not None and not text:
        return None  # "?prepare_threshold=": the option's None
    if name == "prepare_threshold":
        if re.fullmatch(r"[0-9]+", text):
            return int(text)
        expected = "an integer >= 0, or empty to never prepare statements"
    else:
        if re.fullmatch(r"\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text):
            seconds = float(text)
            if 0 < seconds < math.inf:
                return seconds
        expected = "a number of seconds > 0, or empty for none"
    shown = "no value" if raw is None else repr(scrub(raw))
    raise ConfigurationError(
        f"invalid {name} in the connection string ({shown}): it must be {expected}"
    )


# -- checking libpq's options before the first connection attempt ------------

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
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslmode": "PGSSLMODE",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
_INT_MAX = 2**31 - 1  # libpq reads these into a C int


def _option_problem(key: str, value: str) -> str | None:
    """Why libpq would refuse ``key=value``, or ``None``."""
    if key == "port":
        for port in value.split(","):
            port = port.strip()
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                return "must be a port number from 1 to 65535 (or a comma-separated list of them)"
    elif key in _INTEGER_OPTIONS:
        # libpq: strtol() with blanks allowed around, and the result an int.
        if not re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*", value):
            return "must be an integer"
        if abs(int(value)) > _INT_MAX:
            return "is out of range"
    elif key in _CHOICE_OPTIONS and value not in _CHOICE_OPTIONS[key]:
        return "must be one of " + ", ".join(_CHOICE_OPTIONS[key])
    return None


def check_connection_options(
    params: Mapping[str, Any],
    scrub: Callable[[str], str] | None = None,
    overridden: Collection[str] = (),
) -> None:
    """Refuse option values libpq would refuse at every connection attempt.

    ``params`` are the string's; a missing one is read from its ``PG*``
    variable, unless ``overridden`` (a keyword option replaces it).
    """
    for key in ("port", *_INTEGER_OPTIONS, *_CHOICE_OPTIONS):
        value = params.get(key)
        source = f"connection option {key}"
        if value is None and key in _OPTION_ENV_VARS and key not in overridden:
            value = os.environ.get(_OPTION_ENV_VARS[key]) or None
            source = f"environment variable {_OPTION_ENV_VARS[key]}"
        if value is None:
            continue
        problem = _option_problem(key, str(value))
        if problem is not None:
            shown = scrub(str(value)) if scrub else str(value)
            raise ConfigurationError(f"invalid {source}={shown!r}: it {problem}")


# TCP keepalives for every connection, unless the connection string (or a
# service file) sets them: an idle connection whose server or network path
# died is noticed within about a minute (30 s idle, then 3 probes 10 s apart),
# and the probes keep NATs and load balancers, which drop flows idle for a few
# minutes, from forgetting the connection. tcp_user_timeout (milliseconds)
# covers the other case, data sent and never acknowledged: the same minute,
# instead of the kernel's ~15 minutes of retransmissions. It never limits a
# long query: a healthy server acknowledges at the TCP level, busy or not.
KEEPALIVE_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _keepalive_defaults(params: Mapping[str, Any]) -> dict[str, int]:
    if "service" in params or os.environ.get("PGSERVICE"):
        return {}  # the service file may set them; a keyword would override it
    defaults = {k: v for k, v in KEEPALIVE_DEFAULTS.items() if k not in params}
    if pq.version() < 120000:  # libpq 11 and older would refuse the option
        defaults.pop("tcp_user_timeout", None)
    return defaults


# -- keeping passwords out of configuration errors ----------------------------

# The 3-character runs of a password are what the redaction of a malformed
# string looks for: a string that libpq splits somewhere inside a password
# (an unquoted space, an unencoded "/") may echo any piece of it.
MIN_FRAGMENT = 3
_SECRET_NAME = re.compile(r"[A-Za-z_]*(?:password|passphrase)[A-Za-z_]*", re.IGNORECASE)


@functools.cache
def _libpq_keywords() -> list[str]:
    names = [opt.keyword.decode() for opt in pq.Conninfo.get_defaults()]
    return sorted({*names, *STRING_OPTIONS, "dbname", "host"}, key=len, reverse=True)


def _password_candidates(conninfo: str) -> set[str]:
    """Every text of ``conninfo`` that may hold (part of) a password, read every
    way a malformed string could be meant: redacting all of them from an error
    message keeps every piece of the password out of it."""
    keywords = "|".join(map(re.escape, _libpq_keywords()))
    found: set[str] = set()
    if conninfo.startswith(URI_PREFIXES):
        body = conninfo[len(next(p for p in URI_PREFIXES if conninfo.startswith(p))) :]
        for at in (i for i, c in enumerate(body) if c == "@"):
            _user, colon, password = body[:at].partition(":")
            if colon:
                found.add(password)
        next_param = re.compile(rf"&(?:{keywords})=")
        for match in re.finditer(r"[?&]([^=&]*)=", conninfo):
            if _SECRET_NAME.fullmatch(unquote(match.group(1))):
                rest = conninfo[match.end() :]
                after = next_param.search(rest)
                found.update((rest[: after.start()] if after else rest, rest.partition("&")[0]))
        found.update({unquote(f) for f in found})
    else:
        next_pair = re.compile(rf"\s(?:{keywords})\s*=")
        for match in re.finditer(rf"(?:{_SECRET_NAME.pattern})\s*=\s*", conninfo, re.I):
            rest = conninfo[match.end() :]
            after = next_pair.search(rest)
            found.add(rest[: after.start()] if after else rest)
            read = _read_value(rest, 0)
            found.add(read[0] if read else rest)
        found.update({re.sub(r"\\(.)", r"\1", f, flags=re.S) for f in found})
    return {f for f in found if f}


class _Scrubber:
    """Removes from echoed text every run of 3 or more characters found in a
    possible password (and each short possible password as a whole)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._candidates: tuple[str, ...] | None = None
        self.changed = False

    def __call__(self, text: str) -> str:
        if self._candidates is None:
            self._candidates = tuple(_password_candidates(self._conninfo))
        candidates = self._candidates
        if not candidates:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            length = 0
            while i + length < len(text) and any(text[i : i + length + 1] in c for c in candidates):
                length += 1
            if length < MIN_FRAGMENT and text[i : i + length] not in candidates:
                length = 0
            if length:
                out.append(REDACTED)
                i += length
                self.changed = True
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def libpq_message(self, message: str) -> str:
        """libpq's message about a malformed string: it quotes what it echoes."""
        message = message.strip()
        first, last = message.find('"'), message.rfind('"')
        if first < last:
            message = message[:first] + self(message[first : last + 1]) + message[last + 1 :]
        return message

    def hint(self, conninfo: str) -> str:
        """How to write the string so that libpq reads the password whole."""
        if not self.changed:
            return ""
        if conninfo.startswith(URI_PREFIXES):
            return (
                " (percent-encode the user name and password in a URI, for example "
                "with urllib.parse.quote(password, safe=''))"
            )
        return " (quote a value that contains spaces: key='a b', with \\' and \\\\ inside)"


_STRAY_AT = (
    "invalid connection string: an '@' follows the user name and password; write "
    "'@', '/' and '%' in a user name or password percent-encoded, for example with "
    "urllib.parse.quote(password, safe=''), and '@' in a host or database name as %40"
)


def _check_uri_shape(conninfo: str) -> None:
    """Refuse a URI that libpq would read with part of the password as host or database.

    libpq ends the user name and password at the first ``@`` or ``/``, so an
    unencoded ``@`` or ``/`` in a password leaves its tail as the host or the
    database name: shown in a repr, echoed by every connection error. An
    ``@`` is never part of a host, and a database name can spell it ``%40``.
    """
    if conninfo.startswith(URI_PREFIXES):
        begin, query = _uri_parts(conninfo)
        if "@" in conninfo[begin:query]:
            raise ConfigurationError(_STRAY_AT)


# -- resolving ----------------------------------------------------------------


def resolve_config(
    connection_string: str | None, options: Mapping[str, Any], caller: str = "create_pool"
) -> PoolConfig:
    """Resolve a connection string (or the environment) and options into a ``PoolConfig``.

    A keyword option overrides the string's value; the string's overrides
    pgfast's default.
    """
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
    scrub = _Scrubber(connection_string)
    overrides: dict[str, Any] = {}
    try:
        _check_uri_shape(connection_string)
        conninfo, own = split_string_options(connection_string)
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            message = scrub.libpq_message(str(exc))
            raise ConfigurationError(
                f"invalid connection string: {message}{scrub.hint(connection_string)}"
            ) from None
        except UnicodeDecodeError:  # psycopg decodes libpq's values as UTF-8
            raise ConfigurationError(
                "invalid connection string: a value percent-encodes bytes that are not UTF-8 text"
            ) from None
        secrets.update(str(v) for k, v in params.items() if _is_secret_key(k) and v)
        for name, raw in own.items():
            value = _string_option(name, raw, scrub)
            if name not in options:
                overrides[name] = value
        kwargs: dict[str, Any] = {"autocommit": True}
        if isinstance(opts.password, str):
            kwargs["password"] = opts.password
        if opts.application_name is not None:
            kwargs["application_name"] = opts.application_name
        # libpq counts whole seconds. The string's value (or PGCONNECT_TIMEOUT)
        # stands unless the keyword was given; else pgfast's default applies.
        explicit = "connect_timeout" in options
        if explicit or (
            "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT")
        ):
            kwargs["connect_timeout"] = max(1, math.ceil(opts.connect_timeout))
        check_connection_options(params, scrub, overridden=kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(redact_secrets(str(exc), secrets)) from None

    settings = session_settings(opts)
    if settings:
        extra = " ".join(f"-c {k}={_escape_option_value(v)}" for k, v in settings.items())
        existing = params.get("options")
        kwargs["options"] = f"{existing} {extra}" if existing else extra
    kwargs.update(_keepalive_defaults(params))
    # What psycopg really waits for one attempt: at least 2 s, and for 0 (libpq's
    # "forever") its own default.
    connect_timeout = float(timeout_from_conninfo({**params, **kwargs}))
    overrides["connect_timeout"] = connect_timeout

    return PoolConfig(
        conninfo=conninfo,
        connect_kwargs=kwargs,
        options=dataclasses.replace(opts, **overrides),
        display=_describe(params),
        secrets=frozenset(secrets),
    )
