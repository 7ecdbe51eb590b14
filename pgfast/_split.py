"""``pgfast.split``: one ``SQLQuery`` per statement of a multi-statement query.

PostgreSQL runs a text with several ``;``-separated statements only through
the simple protocol, which carries no parameters. ``split`` cuts a query at
its top-level semicolons and gives each statement its own parameters,
renumbered ``$1..$n``, so ``db.query(pgfast.split(q))`` runs them in one
transaction.

The lexer follows PostgreSQL's (``scan.l``) for everything that can hide a
semicolon: string literals (``'...'``, ``E'...'`` with backslash escapes,
``B''``, ``X''``, ``N''``, ``U&''`` and the quote continuation across a
newline), quoted identifiers, ``--`` and nested ``/* */`` comments,
``$tag$...$tag$`` dollar quotes and ``$n`` parameters. Like psql, it does not
end a statement inside parentheses (``CREATE RULE ... DO (a; b)``) or inside
the ``BEGIN ATOMIC ... END`` body of ``CREATE FUNCTION`` / ``CREATE
PROCEDURE``, using psql's own heuristic for the latter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ._classify_py import _SPACE, _ident_cont, _ident_start
from ._sql import is_sql_query, sql

if TYPE_CHECKING:
    from ._compose_py import SQLBuilder, SQLQuery

__all__ = ["has_several_statements", "several_statements_error", "split", "statement_keyword"]

# Between the two halves of a continued string literal ('a'\n'b'): PostgreSQL
# allows only whitespace and -- comments, with at least one newline.
_HORIZONTAL = " \t\f\v"
_NEWLINE = "\n\r"
_PSQL_WORDS = {"create": "c", "function": "f", "procedure": "p", "or": "o", "replace": "r"}


class _Statement(NamedTuple):
    start: int
    end: int
    params: list[tuple[int, int, int]]
    """``(start, end, number)`` of each ``$n`` token."""


class LexError(ValueError):
    """Text that PostgreSQL would reject before splitting: an unterminated token."""


def _unterminated(text: str, at: int, what: str) -> LexError:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return LexError(f"unterminated {what} starting at line {line}, column {column}")


def _skip_block_comment(text: str, i: int, n: int) -> int:
    depth = 1
    j = i + 2
    while j < n:
        if text.startswith("/*", j):
            depth += 1
            j += 2
        elif text.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise _unterminated(text, i, "block comment")


def _continues(text: str, j: int, n: int) -> int:
    """Where a continued string literal resumes after a quote closed before ``j``, or -1."""
    newline = False
    while j < n:
        c = text[j]
        if c in _HORIZONTAL:
            j += 1
        elif c in _NEWLINE:
            newline = True
            j += 1
        elif c == "-" and text.startswith("--", j):
            while j < n and text[j] not in _NEWLINE:
                j += 1
        else:
            break
    return j if newline and j < n and text[j] == "'" else -1


def _skip_string(text: str, i: int, n: int, backslash: bool, start: int = -1) -> int:
    """End of the string literal whose opening quote is at ``i`` (its prefix at ``start``).

    ``backslash``: a backslash escapes the next character (``E''`` strings,
    and plain ones when ``standard_conforming_strings`` is off). A
    continuation (``'a'`` newline ``'b'``) keeps the same rules.
    """
    j = i + 1
    while j < n:
        c = text[j]
        if c == "'":
            if j + 1 < n and text[j + 1] == "'":
                j += 2
                continue
            resume = _continues(text, j + 1, n)
            if resume < 0:
                return j + 1
            j = resume + 1
            continue
        j += 2 if c == "\\" and backslash else 1
    raise _unterminated(text, i if start < 0 else start, "string literal")


def _skip_quoted_ident(text: str, i: int, n: int) -> int:
    j = i + 1
    while j < n:
        if text[j] == '"':
            if j + 1 < n and text[j + 1] == '"':
                j += 2
                continue
            return j + 1
        j += 1
    raise _unterminated(text, i, "quoted identifier")


def _dollar_tag_end(text: str, i: int, n: int) -> int:
    """End of the ``$tag$`` delimiter at ``i``, or -1 when there is none."""
    j = i + 1
    if j < n and _ident_start(text[j]):
        j += 1
        while j < n and _ident_cont(text[j]) and text[j] != "$":
            j += 1
    return j + 1 if j < n and text[j] == "$" else -1


def _statements(text: str, scs: bool = True, limit: int = 0) -> list[_Statement]:
    """The non-empty top-level statements of ``text``, at most ``limit`` (0: all).

    Raises ``LexError`` for an unterminated literal, identifier or comment.
    """
    n = len(text)
    found: list[_Statement] = []
    start = 0
    content = False  # a token other than a comment since ``start``
    params: list[tuple[int, int, int]] = []
    paren = 0
    # psql's heuristic for CREATE FUNCTION ... BEGIN ATOMIC ... END bodies.
    first: list[str] = []
    begin = 0
    i = 0
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        if c == "-" and text.startswith("--", i):
            while i < n and text[i] not in _NEWLINE:
                i += 1
            continue
        if c == "/" and text.startswith("/*", i):
            i = _skip_block_comment(text, i, n)
            continue
        if c == ";" and paren == 0 and begin == 0:
            if content:
                found.append(_Statement(start, i, params))
                if len(found) == limit:
                    return found
            start = i + 1
            content = False
            params = []
            first = []
            i += 1
            continue
        content = True
        nxt = text[i + 1] if i + 1 < n else ""
        if _ident_start(c):
            if nxt == "'" and c in "eE":
                i = _skip_string(text, i + 1, n, True, i)
            elif nxt == "'" and c in "bBxX":
                i = _skip_string(text, i + 1, n, False, i)
            elif nxt == "'" and c in "nN":
                i = _skip_string(text, i + 1, n, not scs, i)
            elif c in "uU" and nxt == "&" and text.startswith("'", i + 2):
                i = _skip_string(text, i + 2, n, False, i)
            elif c in "uU" and nxt == "&" and text.startswith('"', i + 2):
                i = _skip_quoted_ident(text, i + 2, n)
            else:
                j = i + 1
                while j < n and _ident_cont(text[j]):
                    j += 1
                word = text[i:j].lower()
                i = j
                if len(first) < 4:
                    first.append(_PSQL_WORDS.get(word, ""))
                if paren == 0 and _in_routine(first):
                    if word == "begin":
                        begin += 1
                    elif word == "case":
                        if begin:  # CASE ... END only counts inside a body
                            begin += 1
                    elif word == "end" and begin:
                        begin -= 1
        elif c == "'":
            i = _skip_string(text, i, n, not scs)
        elif c == '"':
            i = _skip_quoted_ident(text, i, n)
        elif c == "$":
            if "0" <= nxt <= "9":
                j = i + 1
                while j < n and "0" <= text[j] <= "9":
                    j += 1
                params.append((i, j, int(text[i + 1 : j])))
                i = j
            else:
                tag_end = _dollar_tag_end(text, i, n)
                if tag_end < 0:
                    i += 1
                else:
                    close = text.find(text[i:tag_end], tag_end)
                    if close < 0:
                        raise _unterminated(text, i, "dollar-quoted string")
                    i = close + tag_end - i
        elif "0" <= c <= "9":
            # A number (1, 1.5, 1e3, 0x1F); its letters cannot start a literal.
            i += 1
            while i < n and (text[i].isascii() and (text[i].isalnum() or text[i] in "._")):
                i += 1
        else:
            if c == "(":
                paren += 1
            elif c == ")" and paren:
                paren -= 1
            i += 1
    if content:
        found.append(_Statement(start, n, params))
    return found


def _in_routine(first: list[str]) -> bool:
    """Whether the statement began CREATE [OR REPLACE] FUNCTION|PROCEDURE (psql's test)."""
    if len(first) < 2 or first[0] != "c":
        return False
    if first[1] in ("f", "p"):
        return True
    return len(first) == 4 and first[1] == "o" and first[2] == "r" and first[3] in ("f", "p")


def has_several_statements(text: str) -> bool:
    """Whether ``text`` holds more than one non-empty top-level statement.

    Costs one ``in`` test when there is no ``;``, and little more when the
    only one ends the text. Text the lexer cannot read to the end (an
    unterminated literal) answers False: the server reports it.
    """
    if ";" not in text:
        return False
    # One ';' with nothing after it: at most one statement, however it lexes.
    if text.count(";") == 1 and text.rstrip(_SPACE).endswith(";"):
        return False
    try:
        return len(_statements(text, limit=2)) == 2
    except LexError:
        return False


def several_statements_error() -> ValueError:
    """The error for a single query with parameters and several statements."""
    return ValueError(
        "this query has several statements separated by ';' and has parameters: "
        "PostgreSQL runs a statement with parameters only on its own. Split it with "
        "pgfast.split(q); db.query(pgfast.split(q)) runs the statements in one transaction"
    )


def split(q: SQLQuery, *, standard_conforming_strings: bool = True) -> list[SQLQuery]:
    """The statements of ``q``, one ``SQLQuery`` each, with their own parameters.

    ``q`` is cut at its top-level semicolons (not those in literals, quoted
    identifiers, comments, dollar quotes, parentheses or a ``BEGIN ATOMIC``
    body). Each part keeps the parameters it refers to, renumbered ``$1..$n``;
    surrounding whitespace is trimmed and parts with only whitespace and
    comments are dropped. ``standard_conforming_strings=False`` reads
    backslashes in plain ``'...'`` literals as escapes, as a server with that
    setting off does.

    Raises ``ValueError`` for an unterminated literal, identifier or comment,
    and for a parameter no statement refers to (one inside a literal or a
    comment).
    """
    if not is_sql_query(q):
        raise TypeError(
            f"pgfast.split() takes an SQLQuery built with pgfast.sql, not {type(q).__name__!r}"
        )
    return split_with(sql, q, standard_conforming_strings)


def split_with(builder: SQLBuilder, q: Any, scs: bool = True) -> list[SQLQuery]:
    """``split`` building the parts with ``builder`` (one implementation's ``sql``)."""
    text, params = q.format()
    try:
        statements = _statements(text, scs)
    except LexError as exc:
        raise ValueError(f"pgfast.split(): {exc}") from None
    used = [False] * len(params)
    parts: list[SQLQuery] = []
    for start, end, refs in statements:
        while text[start] in _SPACE:
            start += 1
        while text[end - 1] in _SPACE:
            end -= 1
        pieces: list[SQLQuery] = []
        pos = start
        for token_start, token_end, number in refs:
            if not 1 <= number <= len(params):
                raise ValueError(
                    f"pgfast.split(): the text refers to parameter ${number}, but the "
                    f"query has {len(params)} parameter(s)"
                )
            used[number - 1] = True
            pieces.append(builder.unsafe(text[pos:token_start]))
            pieces.append(builder.value(params[number - 1]))
            pos = token_end
        pieces.append(builder.unsafe(text[pos:end]))
        part = pieces[0] if len(pieces) == 1 else builder.join(pieces, "")
        part.format()  # a $n that now runs into its neighbour fails here, not later
        parts.append(part)
    if not all(used):
        number = used.index(False) + 1
        raise ValueError(
            f"pgfast.split(): no statement refers to parameter ${number}; is its field "
            "inside a string literal or a comment?"
        )
    return parts


def statement_keyword(text: str) -> str | None:
    """The first keyword of ``text`` in upper case (``"SELECT"``), or ``None``.

    Comments, whitespace and opening parentheses before it are skipped.
    """
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c in _SPACE or c == "(":
            i += 1
        elif c == "-" and text.startswith("--", i):
            while i < n and text[i] not in _NEWLINE:
                i += 1
        elif c == "/" and text.startswith("/*", i):
            try:
                i = _skip_block_comment(text, i, n)
            except LexError:
                return None
        else:
            break
    j = i
    while j < n and text[j].isascii() and (text[j].isalpha() or text[j] == "_"):
        j += 1
    if j == i or (j < n and _ident_cont(text[j])):
        return None
    return text[i:j].upper()
