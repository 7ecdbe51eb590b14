# Compiled twin of pgfast/_classify_py.py; pgfast/_impl.py chooses one of the two for the process.
"""Read/write classifier of SQL text: the compiled twin of ``pgfast._classify_py``.

The algorithm is the pure twin's, step for step (see its docstring). This one
reads characters straight from the str's buffer in one pass, and compares
keywords and function names in C; the word tables are the pure twin's, so the
two cannot drift apart.
"""

from cpython.unicode cimport (
    PyUnicode_DATA,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
)
from libc.string cimport memcmp

cdef extern from "Python.h":
    # An exact str copy of a str subclass, without calling any of its methods.
    str PyUnicode_FromObject(object)

from pgfast import _classify_py as _py
from pgfast._classify_py import _KEYWORDS, WRITE_FUNCTION_PREFIXES, WRITE_FUNCTIONS

__all__ = ["WRITE_FUNCTIONS", "WRITE_FUNCTION_PREFIXES", "is_read_only"]

# Token kinds and statement phases: the same values as in the pure twin.
cdef enum:
    OTHER = 0
    LPAREN = 1
    RPAREN = 2
    SEMI = 3
    QUOTED = 4
    WORD = 5
    SELECT = 6
    WITH = 7
    VALUES = 8
    TABLE = 9
    SHOW = 10
    EXPLAIN = 11
    ANALYZE = 12
    FOR = 13
    LOCK_WORD = 14
    WRITE = 15

# _KEYWORDS holds the pure twin's kind numbers: they must be these.
if (_py._WORD, _py._SELECT, _py._WITH, _py._VALUES, _py._TABLE, _py._SHOW, _py._EXPLAIN,
        _py._ANALYZE, _py._FOR, _py._LOCK_WORD, _py._WRITE) != tuple(range(WORD, WRITE + 1)):
    raise ImportError("pgfast._classify_c does not match pgfast._classify_py: rebuild it")

cdef enum:
    EMPTY = 0
    OPEN = 1
    AFTER_EXPLAIN = 2
    EXPLAIN_KW = 3
    EXPLAIN_OPTS = 4
    EXPLAINED = 5
    BODY = 6

cdef enum:
    WORDS_MAX = 64  # entries per C word table
    NAME_MAX = 64  # characters of a name compared (longer ones match prefixes only)


# C views of the word tables. The bytes objects stay referenced by the
# module-level tuples, so the pointers stay valid.
cdef tuple _KW_BYTES = tuple(word.encode("ascii") for word in _KEYWORDS)
cdef tuple _EXACT_BYTES = tuple(name.encode("ascii") for name in WRITE_FUNCTIONS)
cdef tuple _PREFIX_BYTES = tuple(prefix.encode("ascii") for prefix in WRITE_FUNCTION_PREFIXES)


cdef struct Words:
    Py_ssize_t count
    const char *text[WORDS_MAX]
    Py_ssize_t length[WORDS_MAX]
    int kind[WORDS_MAX]


cdef Words _keywords, _exact, _prefixes


cdef void _fill(Words *words, tuple table, object kinds) except *:
    cdef bytes word
    if len(table) > WORDS_MAX:
        raise RuntimeError("pgfast._classify_c: word table too large")
    words.count = 0
    for word in table:
        if len(word) >= NAME_MAX:
            raise RuntimeError(f"pgfast._classify_c: {word!r} is too long")
        words.text[words.count] = word
        words.length[words.count] = len(word)
        words.kind[words.count] = kinds.get(word.decode(), 0)
        words.count += 1


_fill(&_keywords, _KW_BYTES, _KEYWORDS)
_fill(&_exact, _EXACT_BYTES, {})
_fill(&_prefixes, _PREFIX_BYTES, {})


cdef inline Py_UCS4 _at(int kind, const void *data, Py_ssize_t n, Py_ssize_t i) noexcept:
    # NUL is rejected up front, so 0 safely means "past the end".
    return PyUnicode_READ(kind, data, i) if i < n else 0


cdef inline bint _space(Py_UCS4 c) noexcept:
    return c == ' ' or c == '\t' or c == '\n' or c == '\r' or c == '\f' or c == '\v'


cdef inline bint _digit(Py_UCS4 c) noexcept:
    return '0' <= c <= '9'


cdef inline bint _ident_start(Py_UCS4 c) noexcept:
    return 'a' <= c <= 'z' or 'A' <= c <= 'Z' or c == '_' or c >= 0x80


cdef inline bint _ident_cont(Py_UCS4 c) noexcept:
    return _ident_start(c) or _digit(c) or c == '$'


cdef Py_ssize_t _skip_block_comment(
    int kind, const void *data, Py_ssize_t n, Py_ssize_t i
) noexcept:
    cdef Py_ssize_t depth = 1
    cdef Py_UCS4 c
    i += 2
    while i < n:
        c = PyUnicode_READ(kind, data, i)
        if c == '/' and _at(kind, data, n, i + 1) == '*':
            depth += 1
            i += 2
        elif c == '*' and _at(kind, data, n, i + 1) == '/':
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


cdef Py_ssize_t _skip_quoted(
    int kind, const void *data, Py_ssize_t n, Py_ssize_t i, Py_UCS4 quote, bint backslash
) noexcept:
    cdef Py_UCS4 c
    i += 1
    while i < n:
        c = PyUnicode_READ(kind, data, i)
        if c == quote:
            if _at(kind, data, n, i + 1) == quote:
                i += 2
                continue
            return i + 1
        if c == '\\' and quote == '\'':
            if backslash:
                i += 1
            elif _at(kind, data, n, i + 1) == '\'':
                return -1
        i += 1
    return -1


cdef Py_ssize_t _skip_dollar(str text, int kind, const void *data, Py_ssize_t n, Py_ssize_t i):
    cdef Py_ssize_t j = i + 1, end
    cdef Py_UCS4 c = _at(kind, data, n, j)
    if _digit(c):
        while _digit(_at(kind, data, n, j)):
            j += 1
        return j
    if _ident_start(c):
        j += 1
        c = _at(kind, data, n, j)
        while _ident_cont(c) and c != '$':
            j += 1
            c = _at(kind, data, n, j)
    if c != '$':
        return -1
    end = text.find(text[i:j + 1], j + 1)
    return -1 if end < 0 else end + j + 1 - i


cdef int _keyword(int kind, const void *data, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef char word[NAME_MAX]
    cdef Py_ssize_t length = end - start, k
    cdef Py_UCS4 c
    if length >= NAME_MAX:
        return WORD
    for k in range(length):
        c = PyUnicode_READ(kind, data, start + k)
        if c >= 0x80:
            return WORD
        word[k] = <char>(<unsigned int>c | 0x20) if 'A' <= c <= 'Z' else <char>c
    for k in range(_keywords.count):
        if _keywords.length[k] == length and memcmp(word, _keywords.text[k], length) == 0:
            return _keywords.kind[k]
    return WORD


cdef bint _writes(
    int kind, const void *data, Py_ssize_t start, Py_ssize_t end, bint fold
) noexcept:
    cdef char name[NAME_MAX]
    cdef Py_ssize_t length = end - start, k
    cdef Py_UCS4 c
    for k in range(min(length, NAME_MAX)):
        c = PyUnicode_READ(kind, data, start + k)
        # A non-ASCII character matches no (ASCII) table entry.
        if c >= 0x80:
            name[k] = <char>0xFF
        elif fold and 'A' <= c <= 'Z':
            name[k] = <char>(<unsigned int>c | 0x20)
        else:
            name[k] = <char>c
    for k in range(_exact.count):
        if _exact.length[k] == length and memcmp(name, _exact.text[k], length) == 0:
            return True
    for k in range(_prefixes.count):
        if (
            _prefixes.length[k] <= length
            and memcmp(name, _prefixes.text[k], _prefixes.length[k]) == 0
        ):
            return True
    return False


cdef inline bint _starts_read(int token) noexcept:
    return token in (SELECT, WITH, VALUES, TABLE)


def is_read_only(text):
    """True when every statement of ``text`` provably cannot write or lock.

    A ``str`` subclass is read by its ``str`` value: its own methods are never used.
    """
    if not isinstance(text, str):
        raise TypeError(f"is_read_only() takes the SQL text as a str, not {type(text).__name__}")
    if type(text) is not str:  # a subclass is read by its str value, never its methods
        text = PyUnicode_FromObject(text)
    if "\x00" in text:  # libpq would cut the text there: what runs is unknown
        return False
    cdef str s = <str>text
    cdef int kind = PyUnicode_KIND(s)
    cdef const void *data = PyUnicode_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    cdef Py_ssize_t i = 0, start, name_start = 0, name_end = 0, depth = 0, statements = 0
    cdef int phase = EMPTY, prev = OTHER, token
    cdef Py_UCS4 c, nxt
    while i < n:
        c = PyUnicode_READ(kind, data, i)
        if _space(c):
            i += 1
            continue
        nxt = _at(kind, data, n, i + 1)
        if c == '-' and nxt == '-':
            while i < n:
                c = PyUnicode_READ(kind, data, i)
                if c == '\n' or c == '\r':
                    break
                i += 1
            continue
        if c == '/' and nxt == '*':
            i = _skip_block_comment(kind, data, n, i)
            if i < 0:
                return False
            continue

        start = i
        token = OTHER
        if _ident_start(c):
            if nxt == '\'' and (c == 'e' or c == 'E'):
                i = _skip_quoted(kind, data, n, i + 1, '\'', True)
            elif nxt == '\'' and (
                c == 'b' or c == 'B' or c == 'x' or c == 'X' or c == 'n' or c == 'N'
            ):
                i = _skip_quoted(kind, data, n, i + 1, '\'', False)
            elif (c == 'u' or c == 'U') and nxt == '&' and _at(kind, data, n, i + 2) == '\'':
                i = _skip_quoted(kind, data, n, i + 2, '\'', False)
            elif (c == 'u' or c == 'U') and nxt == '&' and _at(kind, data, n, i + 2) == '"':
                return False  # U&"..." [UESCAPE '.']: its escapes can spell any name
            else:
                i += 1
                while i < n and _ident_cont(PyUnicode_READ(kind, data, i)):
                    i += 1
                token = _keyword(kind, data, start, i)
        elif c == '\'':
            i = _skip_quoted(kind, data, n, i, '\'', False)
        elif c == '"':
            i = _skip_quoted(kind, data, n, i, '"', False)
            token = QUOTED
        elif c == '$':
            i = _skip_dollar(s, kind, data, n, i)
        elif _digit(c):
            while i < n and _digit(PyUnicode_READ(kind, data, i)):
                i += 1
        else:
            i += 1
            if c == '(':
                token = LPAREN
            elif c == ')':
                token = RPAREN
            elif c == ';':
                token = SEMI
        if i < 0:  # unterminated literal or identifier, or a stray "$"
            return False

        if token == SEMI:
            if phase == BODY:
                statements += 1
            elif phase != EMPTY:
                return False
            phase = EMPTY
            token = OTHER
        elif token == LPAREN:
            if prev >= WORD and _writes(kind, data, name_start, name_end, True):
                return False
            if prev == QUOTED and _writes(kind, data, name_start + 1, name_end - 1, False):
                return False
            if phase == EMPTY:
                phase = OPEN
            elif phase == AFTER_EXPLAIN:
                phase = EXPLAIN_OPTS
                depth = 1
            elif phase == EXPLAIN_OPTS:
                depth += 1
            elif phase == EXPLAIN_KW:
                phase = EXPLAINED
        elif token == RPAREN:
            if phase == EXPLAIN_OPTS:
                depth -= 1
                if depth == 0:
                    phase = EXPLAINED
            elif phase != BODY:
                return False
        elif token >= WORD:
            if token == WRITE or (token == LOCK_WORD and prev == FOR):
                return False
            if phase in (EMPTY, OPEN):
                if _starts_read(token) or token == SHOW:
                    phase = BODY
                elif token == EXPLAIN:
                    phase = AFTER_EXPLAIN
                else:
                    return False
            elif phase in (AFTER_EXPLAIN, EXPLAIN_KW):
                if token == ANALYZE:
                    phase = EXPLAIN_KW
                elif _starts_read(token):
                    phase = BODY
                else:
                    return False
            elif phase == EXPLAINED:
                if not _starts_read(token):
                    return False
                phase = BODY
        elif phase != BODY and phase != EXPLAIN_OPTS:
            return False
        if token == QUOTED or token >= WORD:
            name_start = start
            name_end = i
        prev = token
    if phase == BODY:
        statements += 1
    elif phase != EMPTY:
        return False
    return statements > 0
