"""Pure-Python twin of ``pgfast._compose_c``: safe SQL fragments and ``$n`` numbering.

An ``SQLQuery`` is a node of an immutable tree: ``literals`` (SQL text)
interleaved with ``values`` (one fewer), each a bound parameter or a spliced
``SQLQuery``. Composing only stores references; ``format()`` walks the tree
once, without recursion so that deep trees are fine, numbers the parameters
``$1..$n`` in order of appearance and caches the result on the query.

A ``$n`` must not touch a word character (letter, digit, ``_``, ``$`` or any
non-ASCII character): PostgreSQL would read ``$1`` followed by ``0`` as
``$10`` and ``x`` followed by ``$1`` as the identifier ``x$1``. ``format()``
raises ``ValueError`` there rather than rendering something else, because
any separator it inserted could itself change what the SQL means; the caller
adds a space or a cast. The check only looks at the characters next to each
emitted ``$n``.
"""

from __future__ import annotations

import string
import sys
from _string import formatter_parser  # type: ignore[import-not-found]
from codecs import BOM_UTF8
from collections.abc import Iterable
from itertools import repeat
from operator import is_
from os import PathLike, fspath
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, cast

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import LiteralString

    class SQLBuilder(Protocol):
        """The type of ``pgfast.sql``: a callable with helper attributes."""

        def __call__(self, template: SQLTemplate, /, *args: Any, **kwargs: Any) -> SQLQuery: ...

        @staticmethod
        def ident(*names: str) -> SQLQuery: ...
        @staticmethod
        def value(value: Any, /) -> SQLQuery: ...
        @staticmethod
        def unsafe(text: str, /) -> SQLQuery: ...
        @staticmethod
        def file(path: str | PathLike[str], /) -> SQLQuery: ...
        @staticmethod
        def join(queries: Iterable[SQLQuery], separator: SQLQuery | str = ", ") -> SQLQuery: ...


if sys.version_info >= (3, 14):
    from string.templatelib import Template

    _TEMPLATE_TYPES: tuple[type, ...] = (Template,)
    if TYPE_CHECKING:
        SQLTemplate: TypeAlias = LiteralString | Template
else:
    _TEMPLATE_TYPES = ()
    if TYPE_CHECKING:
        SQLTemplate: TypeAlias = LiteralString

__all__ = [
    "CACHE_SIZE",
    "MAX_IDENT_BYTES",
    "SEPARATORS",
    "SQLQuery",
    "compose",
    "file",
    "ident",
    "is_sql_query",
    "join",
    "sql",
    "unsafe",
    "value",
]

CACHE_SIZE = 1024
"""Parsed templates (and quoted identifiers) kept; a cache is emptied when full."""
MAX_IDENT_BYTES = 63
SEPARATORS = ("", ",", ", ", " AND ", " OR ", ") AND (", ") OR (", ";", "\n")


class SQLQuery:
    """An immutable piece of SQL with its bound parameters; build it with ``pgfast.sql``.

    Two queries are equal when their formatted text and parameters are equal.
    The ``repr`` shows the text and the number of parameters, never their
    values, so it is safe to log.
    """

    __slots__ = ("_formatted", "_literals", "_values")
    _literals: tuple[str, ...]
    _values: tuple[Any, ...]
    # Text and params in one slot, set once: a thread never sees half of them.
    _formatted: tuple[str, list[Any]] | None

    def __new__(cls, *args: object, **kwargs: object) -> SQLQuery:
        # Never built (SQLQuery() itself is refused by __init__): the empty
        # query, like sql(""), as the compiled twin's __new__ makes it.
        if cls is not SQLQuery:
            raise TypeError("SQLQuery.__new__() takes the SQLQuery class itself")
        return _new(("",), ())

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("SQLQuery objects are built with pgfast.sql(...)")

    def __init_subclass__(cls, **kwargs: object) -> NoReturn:
        raise TypeError("SQLQuery cannot be subclassed")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SQLQuery objects are immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("SQLQuery objects are immutable")

    def format(self) -> tuple[str, list[Any]]:
        """The SQL text with ``$1..$n`` placeholders, and the parameter values in order.

        Raises ``ValueError`` where a ``$n`` would run into the text next to
        it (``{}0``, ``x{}``): add a space or a cast between them.
        """
        formatted = self._formatted
        if formatted is None:
            formatted = _render(self)
            _set_formatted(self, formatted)
        return formatted[0], list(formatted[1])

    def __add__(self, other: SQLQuery) -> SQLQuery:
        if type(other) is not SQLQuery:
            _concat_error(other)
        return _new(("", "", ""), (self, other))

    def __radd__(self, other: object) -> NoReturn:
        _concat_error(other)

    def __eq__(self, other: object) -> bool:
        if type(other) is not SQLQuery:
            return NotImplemented
        return self.format() == other.format()

    def __hash__(self) -> int:
        return hash(self.format()[0])

    def __repr__(self) -> str:
        try:
            text, params = self.format()
        except ValueError as exc:
            return f"<SQLQuery that cannot be formatted: {exc}>"
        count = len(params)
        return f"<SQLQuery {text!r} ({count} param{'' if count == 1 else 's'})>"

    def __reduce__(self) -> tuple[Any, tuple[tuple[str, ...], tuple[Any, ...]]]:
        return _restore, (self._literals, self._values)


_new_object = object.__new__
# The slots' own setters: SQLQuery.__setattr__ refuses every assignment.
_set_literals = SQLQuery.__dict__["_literals"].__set__
_set_values = SQLQuery.__dict__["_values"].__set__
_set_formatted = SQLQuery.__dict__["_formatted"].__set__


def _new(literals: tuple[str, ...], values: tuple[Any, ...]) -> SQLQuery:
    query: SQLQuery = _new_object(SQLQuery)
    _set_literals(query, literals)
    _set_values(query, values)
    _set_formatted(query, None)
    return query


def _restore(literals: tuple[str, ...], values: tuple[Any, ...]) -> SQLQuery:
    """Unpickle an ``SQLQuery``, checking its shape (rendering trusts it)."""
    if type(literals) is not tuple or type(values) is not tuple:
        raise TypeError("not a pickled SQLQuery: literals and values must be tuples")
    if len(literals) != len(values) + 1 or not all(type(x) is str for x in literals):
        raise ValueError("not a pickled SQLQuery: literals and values do not match")
    return _new(literals, values)


def _concat_error(other: object) -> NoReturn:
    raise TypeError(
        f"can only concatenate SQLQuery to SQLQuery, not {type(other).__name__!r}; "
        "build SQL text with pgfast.sql(...)"
    )


_WORD_ASCII = frozenset(string.ascii_letters + string.digits + "_$")


def _adjacency_error(number: int, char: str, *, following: bool) -> NoReturn:
    if following:
        raise ValueError(
            f"sql(): parameter ${number} is directly followed by {char!r}, which "
            f"PostgreSQL would read as part of it (${number}{char}...); put a space "
            "or a cast (such as ::int) between the field and the text after it"
        )
    raise ValueError(
        f"sql(): parameter ${number} directly follows {char!r}, which PostgreSQL "
        f"would read as one word with it (...{char}${number}); put a space between "
        "the text and the field"
    )


def _render(root: SQLQuery) -> tuple[str, list[Any]]:
    """Walk the tree depth-first: the text with ``$n`` placeholders, and the params."""
    out: list[str] = []
    params: list[Any] = []
    stack: list[tuple[SQLQuery, int]] = []
    node, index = root, 0
    after_param = False
    while True:
        literal = node._literals[index]
        if literal:
            if after_param:
                char = literal[0]
                if char in _WORD_ASCII or char >= "\x80":
                    _adjacency_error(len(params), char, following=True)
                after_param = False
            out.append(literal)
        values = node._values
        if index < len(values):
            value = values[index]
            index += 1
            if type(value) is SQLQuery:
                stack.append((node, index))
                node, index = value, 0
                continue
            params.append(value)
            if out:
                char = out[-1][-1]
                if char in _WORD_ASCII or char >= "\x80":
                    _adjacency_error(len(params), char, following=False)
            out.append(f"${len(params)}")
            after_param = True
        elif stack:
            node, index = stack.pop()
        else:
            return "".join(out), params


class _Parsed(NamedTuple):
    """A checked template: ``literals`` has one more item than ``keys``."""

    literals: tuple[str, ...]
    keys: tuple[int | str, ...]
    n_pos: int
    """How many positional arguments the fields need."""
    in_order: bool
    """Whether the fields are exactly the positional arguments, in order."""
    complete: bool
    """Whether the fields use every positional index below ``n_pos``."""
    names: frozenset[str]
    auto: bool


_cache: dict[str, _Parsed] = {}


def _label(field: str, spec: str, conversion: str | None) -> str:
    return (
        "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    )


def _parse(template: str) -> _Parsed:
    """Split a template into literals and field keys, checking every field."""
    try:
        items = list(formatter_parser(template))
    except ValueError as exc:
        raise ValueError(f"sql(): invalid template {template!r}: {exc}") from None
    literals: list[str] = []
    keys: list[int | str] = []
    auto: bool | None = None
    n_auto = 0
    literal = ""
    for text, field, spec, conversion in items:
        literal += text
        if field is None:
            continue
        label = _label(field, spec, conversion)
        if conversion is not None or spec:
            raise ValueError(
                f"sql(): field {label} has a "
                f"{'conversion' if conversion is not None else 'format spec'}; values are "
                "sent as parameters, so conversions and format specs are not supported"
            )
        key: int | str
        if field == "" or (field.isascii() and field.isdigit()):
            if auto is None:
                auto = field == ""
            elif auto != (field == ""):
                raise ValueError(
                    f"sql(): field {label}: cannot mix automatic field numbering {{}} "
                    "with manual field numbering {0} in one template"
                )
            key = n_auto if auto else int(field)
            if key >= sys.maxsize:  # n_pos, one more, must fit a C Py_ssize_t
                raise ValueError(f"sql(): field {label}: index too large")
            n_auto += 1
        elif field.isidentifier():
            key = field
        else:
            raise ValueError(
                f"sql(): field {label} is not a name or a number; attribute and "
                "index lookups are not supported, pass the value itself"
            )
        literals.append(literal)
        keys.append(key)
        literal = ""
    literals.append(literal)
    positions = [key for key in keys if isinstance(key, int)]
    n_pos = max(positions) + 1 if positions else 0
    return _Parsed(
        literals=tuple(literals),
        keys=tuple(keys),
        n_pos=n_pos,
        in_order=positions == list(range(len(keys))),
        complete=len(set(positions)) == n_pos,
        names=frozenset(key for key in keys if isinstance(key, str)),
        auto=bool(auto),
    )


def _argument_error(parsed: _Parsed, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
    """Raise the error naming the first field or argument that does not match."""
    for key in parsed.keys:
        if isinstance(key, int) and key >= len(args):
            label = f"{{}} (#{key + 1})" if parsed.auto else f"{{{key}}}"
            raise TypeError(
                f"sql(): missing argument for field {label}: the template takes "
                f"{parsed.n_pos} positional argument(s), got {len(args)}"
            )
        if isinstance(key, str) and key not in kwargs:
            raise TypeError(f"sql(): missing keyword argument {key!r} for field {{{key}}}")
    for index in range(len(args)):
        if index not in parsed.keys:
            raise TypeError(
                f"sql(): positional argument {index} is not used by any field of the "
                f"template, which takes {parsed.n_pos} positional argument(s)"
            )
    for name in kwargs:
        if name not in parsed.names:
            raise TypeError(f"sql(): keyword argument {name!r} is not used by any field")
    raise AssertionError("unreachable: the arguments match the template")  # pragma: no cover


def compose(template: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SQLQuery:
    """``sql(template, *args, **kwargs)`` for a plain string template."""
    if type(template) is not str:
        template = _exact_str(
            template, "sql() template must be a str (or a t-string on Python 3.14+)"
        )
    if type(args) is not tuple:
        args = _exact_args(args)
    if type(kwargs) is not dict or (kwargs and not all(map(is_, map(type, kwargs), repeat(str)))):
        kwargs = _exact_kwargs(kwargs)
    parsed = _cache.get(template)
    if parsed is None:
        parsed = _parse(template)
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[template] = parsed
    if kwargs.keys() != parsed.names:
        _argument_error(parsed, args, kwargs)
    if parsed.in_order and len(args) == parsed.n_pos:
        return _new(parsed.literals, args)
    if len(args) != parsed.n_pos or not parsed.complete:
        _argument_error(parsed, args, kwargs)
    values = tuple([args[key] if isinstance(key, int) else kwargs[key] for key in parsed.keys])
    return _new(parsed.literals, values)


def _exact_str(text: Any, what: str) -> str:
    """``text`` as an exact ``str``: a subclass's own methods never shape the SQL.

    Its real type decides, not a ``__class__`` it claims.
    """
    if not issubclass(type(text), str):
        raise TypeError(f"{what}, not {type(text).__name__!r}")
    return str.__str__(text)


def _exact_args(args: Any) -> tuple[Any, ...]:
    if not issubclass(type(args), tuple):
        raise TypeError(f"compose() args must be a tuple, not {type(args).__name__!r}")
    return tuple(args)


def _exact_kwargs(kwargs: Any) -> dict[str, Any]:
    """``kwargs`` as a dict keyed by exact strs (a str subclass by its str value)."""
    if not issubclass(type(kwargs), dict):
        raise TypeError(f"compose() kwargs must be a dict, not {type(kwargs).__name__!r}")
    exact: dict[str, Any] = {}
    for key, value in dict.items(kwargs):
        name = _exact_str(key, "sql(): keyword argument names must be str")
        if name in exact:
            raise TypeError(f"sql(): keyword argument {name!r} is given twice")
        exact[name] = value
    return exact


def _compose_template(template: Any) -> SQLQuery:
    values = []
    for item in template.interpolations:
        if item.conversion is not None or item.format_spec:
            raise ValueError(
                f"sql(): field {{{item.expression}}} has a conversion or format spec; "
                "values are sent as parameters, so neither is supported"
            )
        values.append(item.value)
    return _new(tuple(template.strings), tuple(values))


def _quote_ident(name: str) -> str:
    """``name`` (an exact str) double-quoted, after checking PostgreSQL would keep it whole."""
    if not name:
        raise ValueError("sql.ident(): empty identifier")
    if "\x00" in name:
        raise ValueError(f"sql.ident(): identifier {name!r} contains a NUL character")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ValueError(
            f"sql.ident(): identifier {name!r} is not valid text (it holds a lone surrogate)"
        ) from None
    if size > MAX_IDENT_BYTES:
        raise ValueError(
            f"sql.ident(): identifier {name!r} is longer than {MAX_IDENT_BYTES} bytes "
            "(PostgreSQL would truncate it)"
        )
    return '"' + name.replace('"', '""') + '"'


_ident_cache: dict[tuple[str, ...], SQLQuery] = {}
_SEPARATOR_SET = frozenset(SEPARATORS)


def _sql(template: SQLTemplate, /, *args: Any, **kwargs: Any) -> SQLQuery:
    """Build an ``SQLQuery`` from a template with ``{}``, ``{0}`` or ``{name}`` fields.

    Helpers: ``sql.ident``, ``sql.value``, ``sql.unsafe``, ``sql.file``, ``sql.join``.
    """
    if type(template) is not str and isinstance(template, _TEMPLATE_TYPES):
        if args or kwargs:
            raise TypeError("sql(): a t-string template takes no other arguments")
        return _compose_template(template)
    return compose(template, args, kwargs)


def ident(*names: str) -> SQLQuery:
    """A quoted, dot-separated identifier: ``ident("s", "t")`` is ``"s"."t"``.

    A ``str`` subclass name counts as its ``str`` value: its own methods are never used.
    """
    if not all(map(is_, map(type, names), repeat(str))):
        names = tuple([_exact_str(name, "sql.ident(): names must be str") for name in names])
    query = _ident_cache.get(names)
    if query is None:
        if not names:
            raise TypeError("sql.ident() needs at least one name")
        query = _new((".".join([_quote_ident(name) for name in names]),), ())
        if len(_ident_cache) >= CACHE_SIZE:
            _ident_cache.clear()
        _ident_cache[names] = query
    return query


def value(value: Any) -> SQLQuery:
    """One bound parameter."""
    if type(value) is SQLQuery:
        raise TypeError("sql.value() got an SQLQuery; splice it with sql('{}', query)")
    return _new(("", ""), (value,))


def unsafe(text: str) -> SQLQuery:
    """Raw SQL text, never escaped: for trusted text only."""
    return _new((_exact_str(text, "sql.unsafe() takes a str"),), ())


def file(path: str | PathLike[str]) -> SQLQuery:
    """The UTF-8 text of the file at ``path``, verbatim, as raw SQL.

    Line endings are kept as they are; a leading byte order mark is dropped.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(BOM_UTF8) if data.startswith(BOM_UTF8) else 0)
        raise ValueError(
            f"sql.file(): {fspath(path)!r} is not valid UTF-8 "
            f"({exc.reason} at byte offset {offset})"
        ) from None
    return _new((text,), ())


def join(queries: Iterable[SQLQuery], separator: SQLQuery | str = ", ") -> SQLQuery:
    """The queries one after another, with ``separator`` between them."""
    if type(separator) is not SQLQuery and issubclass(type(separator), str):
        separator = str.__str__(separator)  # a str subclass
    if type(separator) is not SQLQuery and (
        type(separator) is not str or separator not in _SEPARATOR_SET
    ):
        raise ValueError(
            f"sql.join(): separator {separator!r} is not allowed; use an SQLQuery "
            f"or one of {', '.join(repr(s) for s in SEPARATORS)}"
        )
    items = tuple(queries)
    for index, query in enumerate(items):
        if type(query) is not SQLQuery:
            raise TypeError(
                f"sql.join(): item {index} is a {type(query).__name__!r}, not an SQLQuery"
            )
    if not items:
        return _new(("",), ())
    if type(separator) is SQLQuery:
        values: list[Any] = [separator] * (2 * len(items) - 1)
        values[::2] = items
        return _new(("",) * (2 * len(items)), tuple(values))
    return _new(("", *(cast("str", separator),) * (len(items) - 1), ""), items)


for _helper in (ident, value, unsafe, file, join):
    setattr(_sql, _helper.__name__, _helper)
del _helper
_sql.__name__ = _sql.__qualname__ = "sql"
sql = cast("SQLBuilder", _sql)


def is_sql_query(value: object) -> bool:
    """Whether ``value`` is an ``SQLQuery``."""
    return type(value) is SQLQuery
