"""Error messages: code frames under server errors, and redaction of parameter values.

A server error raised through pgfast keeps its psycopg class, ``sqlstate`` and
``diag``; only its message (``str(error)``) is rewritten:

- the primary message, then the DETAIL and HINT lines, as libpq prints them;
- when the server reports a position in the query, a code frame that shows the
  offending line with a ``>`` marker and ``^`` under the token;
- parameter values never appear. Three rules, applied in this order:
  every double-quoted segment of the message that is a substring of some
  parameter's text form, whatever its length, is replaced by ``[redacted]``
  (PostgreSQL quotes the values it echoes: ``invalid input syntax for type
  integer: "ab"``, ``Token "xyz" is invalid``, ``invalid value "ab" for
  "YYYY"``), while quoted names that no parameter contains (constraints,
  columns, ``"YYYY"``) stay readable; every parameter text form of at least
  ``MIN_REDACTED_LEN`` (3) characters is replaced wherever it occurs (shorter
  ones, ``1`` or ``t``, are too common in ordinary text to be recognised
  reliably); and the places where PostgreSQL echoes values are redacted
  whatever the parameters: ``invalid input ...: "<value>"``,
  ``Key (cols)=(<values>)`` and ``Failing row contains (<values>)``. ``diag``
  still holds the server's original fields for code that needs them.
  libpq's and the server's own phrases that hold numbers (``number of
  parameters must be between 0 and 65535``, ``character varying(10)``) are
  kept whole even when a parameter equals one of their numbers: these
  phrases never echo a value.
- known passwords are replaced as well (``secrets``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Sequence, Sized
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from ._config import redact_secrets

MIN_REDACTED_LEN = 3
REDACTED_VALUE = "[redacted]"
CONTEXT_LINES = 2

_ECHO_PATTERNS = (
    # invalid input syntax for type integer: "abc" / invalid input value for enum;
    # a value may hold quotes itself: up to the line's last quote.
    re.compile(r'(invalid input (?:syntax|value)[^:\n]*: )".*"'),
    re.compile(r'((?:malformed [\w ]+ literal|field value out of range): )".*"'),
    # DETAIL:  Key (id)=(42) already exists. / is not present in table /
    # conflicts with existing key (id)=(7).
    re.compile(r"(Key \(.*?\)=)\(.*\)(?= (?:already exists|is not present|conflicts))", re.S),
    re.compile(r"(existing key \(.*?\)=)\(.*\)(?=\.)", re.S),
    re.compile(r"(Failing row contains )\(.*\)(?=\.)", re.S),
    # value "99999999999" is out of range for type integer
    re.compile(r'(value )".*"(?= is out of range)'),
)


# libpq's, psycopg's and the server's own phrases whose numbers a parameter
# may happen to equal. Each is a whole phrase in which no value is ever echoed,
# so that a value (say, of a user's RAISE) cannot hide behind it.
_KEPT_PHRASES = re.compile(
    "|".join(
        (
            r"number of parameters must be between 0 and \d+\b",
            r"the query has \d+ placeholders? but \d+ parameters? (?:was|were) passed",
            r"bind message supplies \d+ parameters?, but prepared statement .*? requires \d+\b",
            r"bind message has \d+ (?:parameter formats but \d+ parameters"
            r"|result formats but query has \d+ columns)",
            r"(?:there is no|could not determine data type of|inconsistent types deduced for) "
            r"parameter \$\d+\b",
            r"for type (?:character varying|character|bit varying|bit)\(\d+\)",
            r"bit string length \d+ does not match type bit\(\d+\)",
            r"A field with precision \d+, scale \d+ (?:must round to an absolute value less "
            r"than (?:10\^)?-?\d+\b|cannot hold an infinite value)",
            r"index row size \d+ exceeds (?:btree version \d+ )?maximum \d+ for index",
            r"index row requires \d+ bytes, maximum size is \d+\b",
            r"row is too big: size \d+, maximum size \d+\b",
            r"number of array dimensions \(\d+\) exceeds the maximum allowed \(\d+\)",
            r"array size exceeds the maximum allowed \(\d+\)",
            r"cannot pass more than \d+ arguments? to a function",
            r"target lists can have at most \d+ entries",
            r"tables can have at most \d+ columns",
            r"string is too long for tsvector \(\d+ bytes, max \d+ bytes\)",
            r"total size of jsonb (?:array|object) elements exceeds the maximum of \d+ bytes",
        )
    )
)


def _outside_kept_phrases(message: str, redact: Callable[[str], str]) -> str:
    """``redact`` applied to every part of ``message`` outside ``_KEPT_PHRASES``."""
    out: list[str] = []
    done = 0
    for match in _KEPT_PHRASES.finditer(message):
        out += (redact(message[done : match.start()]), match.group())
        done = match.end()
    out.append(redact(message[done:]))
    return "".join(out)


def _text_forms(value: Any) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (str, int, float, Decimal, UUID)):
        return [str(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["\\x" + bytes(value).hex()]
    if isinstance(value, (datetime, date, time, timedelta)):
        return [str(value), value.isoformat() if not isinstance(value, timedelta) else str(value)]
    if isinstance(value, (list, tuple)):
        return [form for item in value for form in _text_forms(item)]
    if isinstance(value, dict):
        forms = [form for item in value.values() for form in _text_forms(item)]
        with contextlib.suppress(TypeError, ValueError):
            forms.append(json.dumps(value))
        return forms
    return [str(value)]


def _redact_quoted(message: str, forms: set[str]) -> str:
    """Replace each ``"..."`` segment of ``message`` that some form contains.

    A value may itself hold double quotes, so from each opening quote the
    longest segment that matches wins; a segment matching no form is kept.
    """
    quotes = [i for i, c in enumerate(message) if c == '"']
    out: list[str] = []
    done = 0
    a = 0
    while a < len(quotes) - 1:
        start = quotes[a]
        for b in range(len(quotes) - 1, a, -1):
            inner = message[start + 1 : quotes[b]]
            if inner and any(inner in form for form in forms):
                out.append(message[done:start] + REDACTED_VALUE)
                done = quotes[b] + 1
                a = b + 1
                break
        else:
            a += 1
    return "".join(out) + message[done:]


_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def redact_params(message: str, params: Sequence[Any] | None, every_quoted: bool = False) -> str:
    """``message`` without the parameter values it echoes (see the module doc).

    ``every_quoted``: the values are not known (see ``Sent``), so every
    double-quoted segment goes.
    """
    if every_quoted:
        message = _QUOTED.sub(REDACTED_VALUE, message)
    if params:
        forms = {f for p in params for f in _text_forms(p) if f}
        message = _redact_quoted(message, forms)
        long_forms = sorted((f for f in forms if len(f) >= MIN_REDACTED_LEN), key=len, reverse=True)

        def redact_long_forms(part: str) -> str:
            for form in long_forms:
                part = part.replace(form, REDACTED_VALUE)
            return part

        message = _outside_kept_phrases(message, redact_long_forms)
    for pattern in _ECHO_PATTERNS:
        message = pattern.sub(lambda m: m.group(1) + REDACTED_VALUE, message)
    return message


def _token_length(line: str, col: int, primary: str) -> int:
    near = re.search(r'at or near "((?:[^"]|"")*)"', primary)
    if near:
        token = near.group(1).replace('""', '"')
        if token and line.startswith(token, col):
            return len(token)
    rest = line[col:]
    match = re.match(r"\$\d+|[A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*|\d+(?:\.\d+)?|\S", rest)
    return len(match.group(0)) if match else 1


def code_frame(text: str, position: int, primary: str = "") -> str:
    """Lines of ``text`` around the 1-based character ``position``, marked.

    ``primary`` (the server's message) helps size the ``^^^`` marker.
    """
    lines = text.split("\n")
    offset = max(position - 1, 0)
    lineno = 0
    while lineno < len(lines) - 1 and offset > len(lines[lineno]):
        offset -= len(lines[lineno]) + 1
        lineno += 1
    first = max(0, lineno - CONTEXT_LINES)
    last = min(len(lines), lineno + CONTEXT_LINES + 1)
    width = len(str(last))
    out = []
    for i in range(first, last):
        marker = ">" if i == lineno else " "
        out.append(f"{marker} {i + 1:>{width}} | {lines[i]}".rstrip())
        if i == lineno:
            line = lines[i]
            col = min(offset, len(line))
            length = _token_length(line, col, primary) if col < len(line) else 1
            # Keep tabs so the caret lines up under the token.
            pad = "".join(c if c == "\t" else " " for c in line[:col])
            out.append(f"  {' ' * width} | {pad}{'^' * length}")
    return "\n".join(out)


def error_message(
    exc: psycopg.Error,
    text: str | None,
    params: Sequence[Any] | None,
    secrets: Iterable[str],
    every_quoted: bool = False,
) -> str:
    """The message pgfast gives ``exc``, raised by running ``text`` with ``params``."""
    diag = exc.diag
    primary = diag.message_primary
    if primary is None:
        message = str(exc)
    else:
        message = primary
        if diag.message_detail:
            message += "\nDETAIL:  " + diag.message_detail
        if diag.message_hint:
            message += "\nHINT:  " + diag.message_hint
    message = redact_secrets(redact_params(message, params, every_quoted), secrets)
    position = diag.statement_position if primary is not None else None
    if position and text and position.isdigit() and int(position) > 0:
        # The frame shows only the query text, which never holds values.
        message += "\n\n" + code_frame(text, int(position), primary or "")
    return message


def rewrite_error(
    exc: psycopg.Error,
    text: str | None,
    params: Sequence[Any] | None,
    secrets: Iterable[str],
    every_quoted: bool = False,
) -> None:
    """Replace the message of ``exc`` in place (its class, sqlstate and diag stay)."""
    if getattr(exc, "_pgfast_rewritten", False):
        return
    exc.args = (error_message(exc, text, params, secrets, every_quoted),)
    exc._pgfast_rewritten = True  # type: ignore[attr-defined]


class Sent:
    """The parameters sent so far in one transaction, to redact them from its errors.

    A later statement or the COMMIT may echo values sent earlier (a deferred
    constraint's DETAIL). They are kept up to ``BUDGET`` (characters or
    elements, roughly), so that a bulk load does not hold every batch until it
    commits; past that, the transaction's errors lose every quoted segment.
    """

    BUDGET = 1 << 20
    __slots__ = ("_params", "_size")

    def __init__(self) -> None:
        self._params: list[Any] | None = []
        self._size = 0

    def add(self, params: Sequence[Any]) -> None:
        if self._params is None:
            return
        self._size += sum(len(p) if isinstance(p, Sized) else 1 for p in params)
        if self._size > self.BUDGET:
            self._params = None
        else:
            self._params.extend(params)

    @property
    def params(self) -> list[Any] | None:
        """The parameters sent, or None when there were too many to keep."""
        return self._params
