# Compiled twin of pgfast/_compose_py.py; pgfast/_impl.py chooses one of the two for the process.
# cython: autotestdict=False
"""Compiled twin of ``pgfast._compose_py``: safe SQL fragments and ``$n`` numbering.

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

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject, Py_INCREF
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport (
    PyUnicode_CopyCharacters,
    PyUnicode_DATA,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_New,
    PyUnicode_READ,
    PyUnicode_READ_CHAR,
    PyUnicode_WRITE,
)
from libc.string cimport memcpy


cdef extern from "Python.h":
    Py_UCS4 PyUnicode_MAX_CHAR_VALUE(str text)
    # An exact str copy of a str subclass, without calling any of its methods.
    str PyUnicode_FromObject(object)

import os
import sys
from _string import formatter_parser
from codecs import BOM_UTF8
from pathlib import Path

if sys.version_info >= (3, 14):
    from string.templatelib import Template

    _TEMPLATE_TYPES = (Template,)
else:
    _TEMPLATE_TYPES = ()

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
MAX_IDENT_BYTES = 63
SEPARATORS = ("", ",", ", ", " AND ", " OR ", ") AND (", ") OR (", ";", "\n")

cdef object _MISSING = object()


cdef struct _Frame:
    # Borrowed: every node of the tree is kept alive by the root being rendered.
    PyObject *node
    Py_ssize_t index


@cython.final
@cython.freelist(64)
@cython.trashcan(True)
cdef class SQLQuery:
    """An immutable piece of SQL with its bound parameters; build it with ``pgfast.sql``.

    Two queries are equal when their formatted text and parameters are equal.
    The ``repr`` shows the text and the number of parameters, never their
    values, so it is safe to log.
    """

    cdef tuple _literals
    cdef tuple _values
    cdef Py_ssize_t _n_literals  # in the whole tree
    cdef Py_ssize_t _n_params  # in the whole tree
    # (text, params), set once: a thread never sees half of them.
    cdef tuple _formatted

    def __init__(self, *args, **kwargs):
        raise TypeError("SQLQuery objects are built with pgfast.sql(...)")

    def __setattr__(self, name, value):
        raise AttributeError("SQLQuery objects are immutable")

    def __delattr__(self, name):
        raise AttributeError("SQLQuery objects are immutable")

    cdef inline tuple _format(self):
        cdef tuple formatted = self._formatted
        cdef list params
        if formatted is None:
            params = PyList_New(self._n_params)
            # Made by SQLQuery.__new__ and never built: the empty query, like sql("").
            formatted = ("" if self._literals is None else _render(self, params), params)
            # Without a GIL, two threads may render at once: the first result
            # stays, so a result once read is never replaced (and freed).
            with cython.critical_section(self):
                if self._formatted is None:
                    self._formatted = formatted
                else:
                    formatted = self._formatted
        return formatted

    def format(self):
        """The SQL text with ``$1..$n`` placeholders, and the parameter values in order.

        Raises ``ValueError`` where a ``$n`` would run into the text next to
        it (``{}0``, ``x{}``): add a space or a cast between them.
        """
        cdef tuple formatted = self._format()
        return formatted[0], (<list>formatted[1])[:]

    def __add__(self, other):
        if type(other) is not SQLQuery:
            _concat_error(other)
        return _new(_EMPTY3, (self, other))

    def __radd__(self, other):
        _concat_error(other)

    def __eq__(self, other):
        if type(other) is not SQLQuery:
            return NotImplemented
        return self._format() == (<SQLQuery>other)._format()

    def __hash__(self):
        return hash(self._format()[0])

    def __repr__(self):
        cdef tuple formatted
        cdef Py_ssize_t count
        try:
            formatted = self._format()
        except ValueError as exc:
            return f"<SQLQuery that cannot be formatted: {exc}>"
        count = len(<list>formatted[1])
        return f"<SQLQuery {formatted[0]!r} ({count} param{'' if count == 1 else 's'})>"

    def __reduce__(self):
        if self._literals is None:  # never built: the empty query
            return _restore, (_EMPTY1, ())
        return _restore, (self._literals, self._values)


cdef tuple _EMPTY1 = ("",)
cdef tuple _EMPTY2 = ("", "")
cdef tuple _EMPTY3 = ("", "", "")


cdef inline SQLQuery _new(tuple literals, tuple values):
    cdef SQLQuery query = SQLQuery.__new__(SQLQuery)
    cdef Py_ssize_t n_literals = len(literals), n_params = 0
    for value in values:
        if type(value) is SQLQuery:
            n_literals += (<SQLQuery>value)._n_literals
            n_params += (<SQLQuery>value)._n_params
        else:
            n_params += 1
    query._literals = literals
    query._values = values
    query._n_literals = n_literals
    query._n_params = n_params
    return query


def _restore(literals, values):
    """Unpickle an ``SQLQuery``, checking its shape (rendering trusts it)."""
    if type(literals) is not tuple or type(values) is not tuple:
        raise TypeError("not a pickled SQLQuery: literals and values must be tuples")
    if len(<tuple>literals) != len(<tuple>values) + 1 or not all(
            [type(x) is str for x in <tuple>literals]):
        raise ValueError("not a pickled SQLQuery: literals and values do not match")
    return _new(literals, values)


cdef int _concat_error(object other) except -1:
    raise TypeError(
        f"can only concatenate SQLQuery to SQLQuery, not {type(other).__name__!r}; "
        "build SQL text with pgfast.sql(...)"
    )


cdef inline Py_ssize_t _digits(Py_ssize_t number) noexcept:
    cdef Py_ssize_t digits = 1
    while number >= 10:
        number //= 10
        digits += 1
    return digits


cdef inline bint _is_word(Py_UCS4 char) noexcept:
    """Whether PostgreSQL's lexer would read ``char`` as part of a ``$n`` next to it."""
    return (char >= 128 or char == 36 or char == 95  # non-ASCII, "$", "_"
            or 48 <= char <= 57 or 65 <= char <= 90 or 97 <= char <= 122)


cdef int _adjacency_error(Py_ssize_t number, Py_UCS4 char, bint following) except -1:
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


cdef str _render(SQLQuery root, list params):
    """The text with ``$n`` placeholders; fills ``params`` (made with room for them all).

    A depth-first walk collects the tree's literals, in order, into a C array
    (NULL where a parameter goes) while summing the text's length and widest
    character kind; the text is then written once into a new string, checking
    the characters on either side of each ``$n``.
    """
    cdef Py_ssize_t n_pieces = root._n_literals + root._n_params
    cdef PyObject **pieces = <PyObject **>PyMem_Malloc(n_pieces * sizeof(PyObject *))
    cdef _Frame small[32]
    cdef _Frame *stack = small
    cdef _Frame *grown
    cdef Py_ssize_t depth = 0, capacity = 32, index = 0, count = 0, position = 1
    cdef Py_ssize_t length = 0, size, digits, number, at
    cdef Py_UCS4 maxchar = 127
    cdef SQLQuery node = root
    cdef tuple literals = node._literals
    cdef tuple values = node._values
    cdef Py_ssize_t n = len(values)
    cdef PyObject *piece
    cdef object value
    cdef str text
    cdef unsigned int kind
    cdef char *data
    cdef bint after_param = False
    if pieces == NULL:
        raise MemoryError()
    try:
        pieces[0] = <PyObject *>literals[0]
        while True:
            if index < n:
                value = values[index]
                index += 1
                if type(value) is SQLQuery:
                    if depth == capacity:
                        grown = <_Frame *>PyMem_Malloc(2 * capacity * sizeof(_Frame))
                        if grown == NULL:
                            raise MemoryError()
                        memcpy(grown, stack, capacity * sizeof(_Frame))
                        if stack != small:
                            PyMem_Free(stack)
                        stack = grown
                        capacity *= 2
                    stack[depth].node = <PyObject *>node
                    stack[depth].index = index
                    depth += 1
                    node = <SQLQuery>value
                    index = 0
                else:
                    Py_INCREF(value)
                    PyList_SET_ITEM(params, count, value)
                    count += 1
                    length += 1 + _digits(count)
                    pieces[position] = NULL
                    pieces[position + 1] = <PyObject *>literals[index]
                    position += 2
                    continue
            elif depth:
                depth -= 1
                node = <SQLQuery>stack[depth].node
                index = stack[depth].index
            else:
                break
            # Entered a child (index 0) or returned to a parent: its next literal.
            literals = node._literals
            if literals is None:  # never built (SQLQuery.__new__): empty, no pieces
                n = 0
                continue
            values = node._values
            n = len(values)
            pieces[position] = <PyObject *>literals[index]
            position += 1

        for index in range(n_pieces):
            piece = pieces[index]
            if piece != NULL:
                length += PyUnicode_GET_LENGTH(<str>piece)
                if PyUnicode_MAX_CHAR_VALUE(<str>piece) > maxchar:
                    maxchar = PyUnicode_MAX_CHAR_VALUE(<str>piece)
        text = PyUnicode_New(length, maxchar)
        kind = PyUnicode_KIND(text)
        data = <char *>PyUnicode_DATA(text)
        position = 0
        number = 0
        for index in range(n_pieces):
            piece = pieces[index]
            if piece == NULL:
                number += 1
                if position and _is_word(PyUnicode_READ(kind, data, position - 1)):
                    _adjacency_error(number, PyUnicode_READ(kind, data, position - 1), False)
                after_param = True
                PyUnicode_WRITE(kind, data, position, 36)  # "$"
                digits = _digits(number)
                size = number
                for at in range(position + digits, position, -1):
                    PyUnicode_WRITE(kind, data, at, 48 + size % 10)  # "0" + digit
                    size //= 10
                position += 1 + digits
                continue
            size = PyUnicode_GET_LENGTH(<str>piece)
            if size == 0:
                continue
            if after_param:
                if _is_word(PyUnicode_READ_CHAR(<str>piece, 0)):
                    _adjacency_error(number, PyUnicode_READ_CHAR(<str>piece, 0), True)
                after_param = False
            if PyUnicode_KIND(<str>piece) == kind:
                memcpy(data + position * kind, PyUnicode_DATA(<str>piece), size * kind)
            else:
                PyUnicode_CopyCharacters(text, position, <str>piece, 0, size)
            position += size
        return text
    finally:
        PyMem_Free(pieces)
        if stack != small:
            PyMem_Free(stack)


@cython.final
cdef class _Parsed:
    """A checked template: ``literals`` has one more item than ``keys``."""

    cdef tuple literals
    cdef tuple keys
    cdef Py_ssize_t n_pos  # how many positional arguments the fields need
    cdef bint in_order  # the fields are exactly the positional arguments, in order
    cdef bint complete  # the fields use every positional index below n_pos
    cdef frozenset names
    cdef bint auto


cdef dict _cache = {}


cdef str _label(str field, str spec, object conversion):
    return ("{" + field + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "") + "}")


cdef _Parsed _parse(str template):
    """Split a template into literals and field keys, checking every field."""
    cdef list literals = []
    cdef list keys = []
    cdef object auto = None
    cdef Py_ssize_t n_auto = 0
    cdef str literal = ""
    cdef str label
    cdef _Parsed parsed
    try:
        items = list(formatter_parser(template))
    except ValueError as exc:
        raise ValueError(f"sql(): invalid template {template!r}: {exc}") from None
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
        if field == "" or (field.isascii() and field.isdigit()):
            if auto is None:
                auto = field == ""
            elif auto != (field == ""):
                raise ValueError(
                    f"sql(): field {label}: cannot mix automatic field numbering {{}} "
                    "with manual field numbering {0} in one template"
                )
            key = n_auto if auto else int(field)
            if key >= sys.maxsize:  # n_pos, one more, must fit a Py_ssize_t
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
    parsed = _Parsed.__new__(_Parsed)
    parsed.literals = tuple(literals)
    parsed.keys = tuple(keys)
    parsed.n_pos = max(positions) + 1 if positions else 0
    parsed.in_order = positions == list(range(len(keys)))
    parsed.complete = len(set(positions)) == parsed.n_pos
    parsed.names = frozenset([key for key in keys if isinstance(key, str)])
    parsed.auto = bool(auto)
    return parsed


cdef int _argument_error(_Parsed parsed, tuple args, dict kwargs) except -1:
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
    raise AssertionError("unreachable: the arguments match the template")


cpdef SQLQuery compose(object template, object args, object kwargs):
    """``sql(template, *args, **kwargs)`` for a plain string template."""
    cdef _Parsed parsed
    cdef tuple keys, values
    cdef tuple positional
    cdef dict named
    cdef Py_ssize_t i, n
    if type(template) is not str:
        template = _exact_str(
            template, "sql() template must be a str (or a t-string on Python 3.14+)")
    positional = <tuple>args if type(args) is tuple else _exact_args(args)
    if type(kwargs) is dict and (not kwargs or _str_keys(<dict>kwargs)):
        named = <dict>kwargs
    else:
        named = _exact_kwargs(kwargs)
    found = _cache.get(template)
    if found is None:
        parsed = _parse(template)
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[template] = parsed
    else:
        parsed = <_Parsed>found
    if len(named) != len(parsed.names):
        _argument_error(parsed, positional, named)
    if parsed.in_order and len(positional) == parsed.n_pos:
        return _new(parsed.literals, positional)
    if len(positional) != parsed.n_pos or not parsed.complete:
        _argument_error(parsed, positional, named)
    keys = parsed.keys
    n = len(keys)
    values = PyTuple_New(n)
    for i in range(n):
        key = keys[i]
        if type(key) is int:
            value = positional[<Py_ssize_t>key]
        else:
            value = named.get(key, _MISSING)
            if value is _MISSING:
                _argument_error(parsed, positional, named)
        Py_INCREF(value)
        PyTuple_SET_ITEM(values, i, value)
    return _new(parsed.literals, values)


cdef str _exact_str(object text, str what):
    """``text`` as an exact ``str``: a subclass's own methods never shape the SQL.

    Its real type decides, not a ``__class__`` it claims.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what}, not {type(text).__name__!r}")
    return PyUnicode_FromObject(text)


cdef bint _str_keys(dict kwargs) except -1:
    for key in kwargs:
        if type(key) is not str:
            return False
    return True


cdef tuple _exact_args(object args):
    if not isinstance(args, tuple):
        raise TypeError(f"compose() args must be a tuple, not {type(args).__name__!r}")
    return tuple(args)


cdef dict _exact_kwargs(object kwargs):
    """``kwargs`` as a dict keyed by exact strs (a str subclass by its str value)."""
    cdef dict exact = {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"compose() kwargs must be a dict, not {type(kwargs).__name__!r}")
    for key, value in dict.items(kwargs):
        name = _exact_str(key, "sql(): keyword argument names must be str")
        if name in exact:
            raise TypeError(f"sql(): keyword argument {name!r} is given twice")
        exact[name] = value
    return exact


cdef SQLQuery _compose_template(object template):
    cdef list values = []
    for item in template.interpolations:
        if item.conversion is not None or item.format_spec:
            raise ValueError(
                f"sql(): field {{{item.expression}}} has a conversion or format spec; "
                "values are sent as parameters, so neither is supported"
            )
        values.append(item.value)
    return _new(tuple(template.strings), tuple(values))


cdef str _quote_ident(str name):
    """``name`` (an exact str) double-quoted, after checking PostgreSQL would keep it whole."""
    cdef Py_ssize_t size
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


cdef dict _ident_cache = {}
cdef frozenset _SEPARATOR_SET = frozenset(SEPARATORS)


def sql(template, /, *args, **kwargs):
    """Build an ``SQLQuery`` from a template with ``{}``, ``{0}`` or ``{name}`` fields.

    Helpers: ``sql.ident``, ``sql.value``, ``sql.unsafe``, ``sql.file``, ``sql.join``.
    """
    if type(template) is not str and isinstance(template, _TEMPLATE_TYPES):
        if args or kwargs:
            raise TypeError("sql(): a t-string template takes no other arguments")
        return _compose_template(template)
    return compose(template, args, kwargs)


def ident(*names):
    """A quoted, dot-separated identifier: ``ident("s", "t")`` is ``"s"."t"``.

    A ``str`` subclass name counts as its ``str`` value: its own methods are never used.
    """
    for name in names:
        if type(name) is not str:
            names = tuple([_exact_str(n, "sql.ident(): names must be str") for n in names])
            break
    query = _ident_cache.get(names)
    if query is None:
        if not names:
            raise TypeError("sql.ident() needs at least one name")
        query = _new((".".join([_quote_ident(name) for name in names]),), ())
        if len(_ident_cache) >= CACHE_SIZE:
            _ident_cache.clear()
        _ident_cache[names] = query
    return query


def value(value):
    """One bound parameter."""
    if type(value) is SQLQuery:
        raise TypeError("sql.value() got an SQLQuery; splice it with sql('{}', query)")
    return _new(_EMPTY2, (value,))


def unsafe(text):
    """Raw SQL text, never escaped: for trusted text only."""
    return _new((_exact_str(text, "sql.unsafe() takes a str"),), ())


def file(path):
    """The UTF-8 text of the file at ``path``, verbatim, as raw SQL.

    Line endings are kept as they are; a leading byte order mark is dropped.
    """
    cdef bytes data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(BOM_UTF8) if data.startswith(BOM_UTF8) else 0)
        raise ValueError(
            f"sql.file(): {os.fspath(path)!r} is not valid UTF-8 "
            f"({exc.reason} at byte offset {offset})"
        ) from None
    return _new((text,), ())


def join(queries, separator=", "):
    """The queries one after another, with ``separator`` between them."""
    cdef tuple items
    cdef list values
    cdef Py_ssize_t index, n
    if type(separator) is not SQLQuery and type(separator) is not str:
        if isinstance(separator, str):
            separator = PyUnicode_FromObject(separator)
    if type(separator) is not SQLQuery and (
            type(separator) is not str or separator not in _SEPARATOR_SET):
        raise ValueError(
            f"sql.join(): separator {separator!r} is not allowed; use an SQLQuery "
            f"or one of {', '.join([repr(s) for s in SEPARATORS])}"
        )
    items = tuple(queries)
    n = len(items)
    for index in range(n):
        if type(items[index]) is not SQLQuery:
            raise TypeError(
                f"sql.join(): item {index} is a {type(items[index]).__name__!r}, "
                "not an SQLQuery"
            )
    if n == 0:
        return _new(_EMPTY1, ())
    if type(separator) is SQLQuery:
        values = [items[0]]
        for index in range(1, n):
            values.append(separator)
            values.append(items[index])
        return _new(_EMPTY1 * (2 * n), tuple(values))
    return _new(_EMPTY1 + (separator,) * (n - 1) + _EMPTY1, items)


for _helper in (ident, value, unsafe, file, join):
    setattr(sql, _helper.__name__, _helper)
del _helper


def is_sql_query(value):
    """Whether ``value`` is an ``SQLQuery``."""
    return type(value) is SQLQuery
