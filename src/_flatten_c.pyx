# Compiled twin of pgfast/_flatten_py.py; pgfast/_impl.py chooses one of the two for the process.
"""Turn bulk-loading records into per-column lists or row tuples (compiled twin).

Same names and behaviour as ``pgfast._flatten_py``, errors included (both
build them with ``pgfast._flatten_messages``); library code takes whichever
``pgfast._impl.flatten`` chose. The pure twin's docstring says how records
are read; in particular the input is read once, into a snapshot tuple that
holds every record alive while its methods (user code) run.

Memory safety: a pointer borrowed from a container is only used while no
user code can run (no Python call and no allocation, which could run a
finalizer). Column lists are filled in place, so until they are complete
they are kept out of the garbage collector's view: user code running
meanwhile (a mapping's ``get``) cannot reach a list with empty slots.
"""

from collections.abc import Mapping

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New

# Error paths only: one source of truth for the messages both twins raise.
from pgfast._flatten_messages import (
    BINARY_ELEMENTS,
    MAX_COLUMNS,
    bad_count,
    bad_element,
    bad_index,
    column_not_str,
    column_twice,
    columns_not_a_list,
    key_twice,
    not_a_record,
    unknown_key,
    wrong_length,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    # An exact str copy of a str subclass, without calling any of its methods.
    object PyUnicode_FromObject(object)
    # Borrowed-pointer forms for the inner loops: no refcount traffic beyond
    # the one reference each container takes.
    PyObject *_dict_get "PyDict_GetItem"(PyObject *, PyObject *)
    bint _dict_next "PyDict_Next"(PyObject *, Py_ssize_t *, PyObject **, PyObject **)
    PyObject *_seq_item "PySequence_Fast_GET_ITEM"(PyObject *, Py_ssize_t)
    void _list_set "PyList_SET_ITEM"(PyObject *, Py_ssize_t, PyObject *)
    void _tuple_set "PyTuple_SET_ITEM"(PyObject *, Py_ssize_t, PyObject *)
    void _incref "Py_INCREF"(PyObject *)
    void _gc_track "PyObject_GC_Track"(PyObject *)
    void _gc_untrack "PyObject_GC_UnTrack"(PyObject *)
    Py_ssize_t PY_SSIZE_T_MAX
    long long PyLong_AsLongLongAndOverflow(object, int *) except? -1
    double PyLong_AsDouble(object) except? -1.0

__all__ = [
    "array_literal",
    "batch_ends",
    "binary_array",
    "keys_of",
    "record_to_row",
    "records_to_columns",
    "records_to_rows",
    "tuples_to_columns",
]

cdef Py_ssize_t ELEMENT_OVERHEAD = 4
cdef Py_ssize_t FIXED_SIZE = 8
cdef long long MAX_BYTES = 0x7FFFFFFFFFFFFFFF  # a larger max_bytes never binds


cdef tuple _checked_columns(object columns):
    """``(names, index_of)``: the names as distinct exact strs, and each one's position."""
    cdef list names = []
    cdef dict index_of = {}
    if not isinstance(columns, (list, tuple)):
        raise columns_not_a_list(columns)
    for name in tuple(columns):
        if type(name) is not str:
            if not isinstance(name, str):
                raise column_not_str(name)
            name = PyUnicode_FromObject(name)
        if name in index_of:
            raise column_twice(name)
        index_of[name] = len(names)
        names.append(name)
    return tuple(names), index_of


cdef object _record_index(object value, str what):
    if type(value) is int:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    raise bad_index(what, value)


cdef inline object _at(object start, Py_ssize_t i):
    """Record ``i``'s index in errors (built on error paths only)."""
    return start + i


cdef Py_ssize_t _column_of(object key, dict index_of) except -2:
    """The position of the column ``key`` names; -1 when it names none."""
    cdef PyObject *found
    if type(key) is not str:
        if not isinstance(key, str):
            return -1
        key = PyUnicode_FromObject(key)
    # Exact str keys in a dict of exact strs: no user code, no error.
    found = _dict_get(<PyObject *>index_of, <PyObject *>key)
    if found is NULL:
        return -1
    return <Py_ssize_t>(<object>found)


cdef int _dict_values(
    dict record, object start, Py_ssize_t i, tuple names, dict index_of, PyObject **slots
) except -1:
    """Set ``slots[j]`` to a new reference to ``record``'s value of column ``j`` (None if
    absent). ``slots`` starts all NULL; on error the caller releases what was set.

    Keys built alike share the column objects, in column order: those are matched
    by identity; any other key is looked up by its str value.
    """
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t position = 0, p = 0, j
    cdef PyObject *key
    cdef PyObject *item
    cdef PyObject *none = <PyObject *>None
    cdef object owned_key, owned_value
    while _dict_next(<PyObject *>record, &position, &key, &item):
        if p < width and key == _seq_item(<PyObject *>names, p) and slots[p] is NULL:
            _incref(item)
            slots[p] = item
        else:
            # Own both first: looking a str subclass up allocates (a finalizer may run).
            owned_key = <object>key
            owned_value = <object>item
            j = _column_of(owned_key, index_of)
            if j < 0:
                raise unknown_key(owned_key, _at(start, i), names)
            if slots[j] is not NULL:
                raise key_twice(names[j], _at(start, i))
            Py_INCREF(owned_value)
            slots[j] = <PyObject *>owned_value
        p += 1
    for j in range(width):
        if slots[j] is NULL:
            _incref(none)
            slots[j] = none
    return 0


cdef tuple _other_row(
    object record, object start, Py_ssize_t i, tuple names, dict index_of
):
    """A record that is not an exact dict, tuple or list, read through its own methods."""
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t j
    cdef bytearray seen
    cdef tuple values
    if isinstance(record, Mapping):
        seen = bytearray(width)
        for key in record:
            j = _column_of(key, index_of)
            if j < 0:
                raise unknown_key(key, _at(start, i), names)
            if seen[j]:
                raise key_twice(names[j], _at(start, i))
            seen[j] = 1
        return tuple(map(record.get, names))
    if isinstance(record, (tuple, list)):
        values = tuple(record)
        if len(values) != width:
            raise wrong_length(len(values), _at(start, i), width)
        return values
    raise not_a_record(record, _at(start, i))


cdef tuple _row(object record, object start, Py_ssize_t i, tuple names, dict index_of):
    cdef type kind = type(record)
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t j
    cdef PyObject **slots
    cdef tuple row
    if kind is tuple or kind is list:
        if len(record) != width:
            raise wrong_length(len(record), _at(start, i), width)
        return tuple(record)
    if kind is not dict:
        return _other_row(record, start, i, names, index_of)
    slots = <PyObject **>PyMem_Calloc(width + 1, sizeof(PyObject *))
    if slots is NULL:
        raise MemoryError()
    try:
        _dict_values(<dict>record, start, i, names, index_of, slots)
        row = PyTuple_New(width)
        for j in range(width):
            _tuple_set(<PyObject *>row, j, slots[j])  # steals the slot's reference
            slots[j] = NULL
        return row
    finally:
        for j in range(width):
            Py_XDECREF(slots[j])
        PyMem_Free(slots)


def keys_of(records):
    """The first record's keys, in order: the columns when none are given (``[]`` if empty).

    A ``str`` subclass key is given as its ``str`` value.
    """
    if not records:
        return []
    first = records[0]
    if not isinstance(first, Mapping):
        raise not_a_record(first, 0)
    return [
        PyUnicode_FromObject(key) if type(key) is not str and isinstance(key, str) else key
        for key in first
    ]


def record_to_row(record, columns, index=0):
    """One record as a tuple in ``columns`` order (for COPY); ``index`` is used in errors."""
    cdef tuple names
    cdef dict index_of
    names, index_of = _checked_columns(columns)
    return _row(record, _record_index(index, "index"), 0, names, index_of)


def records_to_rows(records, columns, start=0):
    """Every record as a tuple in ``columns`` order; record indexes in errors begin at ``start``."""
    cdef tuple names
    cdef dict index_of
    names, index_of = _checked_columns(columns)
    first = _record_index(start, "start")
    cdef tuple batch = tuple(records)
    cdef Py_ssize_t i, count = len(batch)
    cdef list rows = []
    for i in range(count):
        rows.append(_row(batch[i], first, i, names, index_of))
    return rows


cdef list _new_columns(Py_ssize_t width, Py_ssize_t count):
    """``width`` lists of ``count`` empty slots, hidden from the garbage collector
    (with the list holding them) until ``_reveal`` shows them complete."""
    cdef list out = PyList_New(width)
    cdef Py_ssize_t j
    cdef object column
    _gc_untrack(<PyObject *>out)
    for j in range(width):
        column = PyList_New(count)
        _gc_untrack(<PyObject *>column)
        Py_INCREF(column)
        _list_set(<PyObject *>out, j, <PyObject *>column)
    return out


cdef list _reveal(list out):
    for column in out:
        _gc_track(<PyObject *>column)
    _gc_track(<PyObject *>out)
    return out


def records_to_columns(records, columns):
    """One list per column holding that column's values in record order."""
    cdef tuple names
    cdef dict index_of
    names, index_of = _checked_columns(columns)
    cdef tuple batch = tuple(records)
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t count = len(batch)
    cdef list out = _new_columns(width, count)
    cdef PyObject **lists = <PyObject **>PyMem_Malloc((width + 1) * sizeof(PyObject *))
    cdef PyObject **slots = <PyObject **>PyMem_Calloc(width + 1, sizeof(PyObject *))
    cdef PyObject *record
    cdef PyObject *item
    cdef Py_ssize_t i, j
    cdef type kind
    cdef tuple row
    if lists is NULL or slots is NULL:
        PyMem_Free(lists)
        PyMem_Free(slots)
        raise MemoryError()
    try:
        for j in range(width):
            lists[j] = _seq_item(<PyObject *>out, j)
        for i in range(count):
            # Borrowed from the snapshot, which holds it alive whatever user code does.
            record = _seq_item(<PyObject *>batch, i)
            kind = type(<object>record)
            if kind is dict:
                _dict_values(<dict><object>record, 0, i, names, index_of, slots)
                for j in range(width):
                    _list_set(lists[j], i, slots[j])  # steals the slot's reference
                    slots[j] = NULL
            elif kind is tuple or kind is list:
                # No user code runs here: the list cannot change under the loop.
                if len(<object>record) != width:
                    raise wrong_length(len(<object>record), i, width)
                for j in range(width):
                    item = _seq_item(record, j)
                    _incref(item)
                    _list_set(lists[j], i, item)
            else:
                row = _other_row(<object>record, 0, i, names, index_of)
                for j in range(width):
                    item = _seq_item(<PyObject *>row, j)
                    _incref(item)
                    _list_set(lists[j], i, item)
    finally:
        for j in range(width):
            Py_XDECREF(slots[j])
        PyMem_Free(lists)
        PyMem_Free(slots)
    return _reveal(out)


def tuples_to_columns(rows, column_count):
    """Transpose tuple/list rows of ``column_count`` values into one list per column."""
    if type(column_count) is not int or not 0 <= column_count <= MAX_COLUMNS:
        raise bad_count(column_count)
    cdef tuple batch = tuple(rows)
    cdef Py_ssize_t width = column_count
    cdef Py_ssize_t count = len(batch)
    cdef list out = _new_columns(width, count)
    cdef Py_ssize_t i, j
    cdef PyObject *item
    cdef object row
    cdef type kind
    for i in range(count):
        row = batch[i]
        kind = type(row)
        if kind is not tuple and kind is not list:
            if not isinstance(row, (tuple, list)):
                raise not_a_record(row, i)
            row = tuple(row)
        if len(row) != width:
            raise wrong_length(len(row), i, width)
        for j in range(width):
            item = _seq_item(<PyObject *>row, j)
            _incref(item)
            _list_set(_seq_item(<PyObject *>out, j), i, item)
    return _reveal(out)


cdef inline Py_ssize_t _size(object value):
    cdef type kind = type(value)
    if value is None:
        return 0
    if kind is str:
        # UTF-8 needs at most 4 bytes a character; ASCII exactly 1.
        return len(<str>value) if PyUnicode_IS_ASCII(value) else 4 * len(<str>value)
    if kind is bytes or kind is bytearray:
        return 2 * len(value)  # hex digits in the text format
    return FIXED_SIZE


@cython.boundscheck(True)  # an allocation may run a finalizer that changes a column
def batch_ends(columns, max_rows, max_bytes):
    """End offsets splitting rows into batches of at most ``max_rows`` rows and about
    ``max_bytes`` bytes of parameters (a single larger row still gets its own batch)."""
    if type(max_rows) is not int or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, not {max_rows!r}")
    if type(max_bytes) is not int or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, not {max_bytes!r}")
    if not isinstance(columns, (list, tuple)):
        raise TypeError("columns must be a list of per-column lists")
    cdef tuple lists = tuple(columns)
    for given in lists:
        if type(given) is not list:
            raise TypeError("columns must be a list of per-column lists")
    if not lists:
        return []
    cdef Py_ssize_t width = len(lists)
    cdef Py_ssize_t count = len(<list>lists[0])
    # Larger limits never bind: at most ``count`` rows, far fewer bytes, fit a batch.
    cdef Py_ssize_t limit_rows = min(max_rows, PY_SSIZE_T_MAX)
    cdef long long limit_bytes = min(max_bytes, MAX_BYTES)
    cdef Py_ssize_t i, j, rows = 0
    cdef long long used = 0, size
    cdef list ends = []
    cdef list column
    for j in range(width):
        if len(<list>lists[j]) != count:
            raise ValueError("all column lists must have the same length")
    for i in range(count):
        size = ELEMENT_OVERHEAD * width
        for j in range(width):
            column = <list>lists[j]
            size += _size(column[i])
        if rows and (rows == limit_rows or used + size > limit_bytes):
            ends.append(i)
            rows = 0
            used = 0
        rows += 1
        used += size
    if rows:
        ends.append(count)
    return ends


def array_literal(values, default):
    """``values`` as a PostgreSQL array literal (``{1,"a",NULL}``) for one text parameter.

    ``None`` is NULL; bool, int, float and str are written directly; any other
    value is written as ``default(value)``; when that is ``None`` (or there is
    no ``default``) the values cannot be written and the result is ``None``.
    The values are read from a snapshot taken first, whatever ``default`` does.
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    cdef tuple items = tuple(values)
    cdef list parts = ["{"]
    cdef Py_ssize_t i, count = len(items)
    cdef object value, text
    cdef type kind
    for i in range(count):
        if i:
            parts.append(",")
        value = items[i]
        kind = type(value)
        if value is None:
            parts.append("NULL")
        elif kind is bool:
            parts.append("t" if value is True else "f")
        elif kind is int:
            parts.append(str(value))
        elif kind is float:
            parts.append(repr(value))
        else:
            if kind is str:
                text = value
            elif default is None:
                return None
            else:
                text = default(value)
                if text is None:
                    return None
                if type(text) is not str:
                    raise TypeError(
                        f"default() must return a str or None, not {type(text).__name__}"
                    )
            if '"' in <str>text or "\\" in <str>text:
                text = (<str>text).replace("\\", "\\\\").replace('"', '\\"')
            parts.append('"')
            parts.append(text)
            parts.append('"')
    parts.append("}")
    return "".join(parts)


cdef inline char *_put_be(char *out, unsigned long long value, int width):
    """Write the low ``width`` bytes of ``value`` big-endian (network order)."""
    cdef int shift
    for shift in range(width - 1, -1, -1):
        out[0] = <char>((value >> (8 * shift)) & 0xFF)
        out += 1
    return out


# PostgreSQL's own NaN (what float8in makes of 'nan'): NaNs of any sign or
# payload arrive as this one, exactly as the text path sends them.
cdef unsigned long long CANONICAL_NAN = 0x7FF8000000000000ULL


cdef tuple KINDS = ("bool", "int", "float")  # the ``kind`` numbers of ``_to_bits``


cdef union _Float8:
    double value
    unsigned long long bits


cdef bint _to_bits(object value, int kind, int width, unsigned long long *bits) except -1:
    """``value``'s bits as a ``width``-byte element of ``kind`` (0 bool, 1 int, 2 float);
    False when the value has another type or does not fit (the text path decides)."""
    cdef type cls = type(value)
    cdef int overflow = 0
    cdef long long number
    cdef long long bound
    cdef _Float8 f
    if kind == 0:
        if cls is not bool:
            return False
        bits[0] = 1 if value is True else 0
        return True
    if kind == 1:
        if cls is not int:
            return False
        number = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return False
        if width < 8:
            bound = 1LL << (8 * width - 1)
            if not -bound <= number < bound:
                return False
        bits[0] = <unsigned long long>number
        return True
    if cls is float:
        f.value = PyFloat_AS_DOUBLE(value)
    elif cls is int:
        try:
            f.value = PyLong_AsDouble(value)
        except OverflowError:
            return False
    else:
        return False
    bits[0] = CANONICAL_NAN if f.value != f.value else f.bits
    return True


def binary_array(values, element):
    """``values`` as a one-dimensional PostgreSQL array in binary format (``array_recv``)
    of ``element`` (a key of ``BINARY_ELEMENTS``), for one binary parameter.

    ``None`` is NULL. Only values that the element type holds exactly are
    written: bool for ``bool``, int in range for ``intN``, float and int for
    ``float8``; when any value is something else the result is ``None``.
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    if type(element) is not str and isinstance(element, str):
        element = PyUnicode_FromObject(element)
    spec = BINARY_ELEMENTS.get(element) if type(element) is str else None
    if spec is None:
        raise bad_element(element)
    cdef unsigned long long oid = spec[0]
    cdef int kind = KINDS.index(spec[1])
    cdef int width = spec[2]
    cdef Py_ssize_t i, count = len(<list>values)
    cdef bint has_null = False
    cdef unsigned long long bits
    # Header (5 words), then per element a length word and at most ``width`` bytes.
    cdef Py_ssize_t capacity = 20 + count * (4 + width)
    cdef char *buffer = <char *>PyMem_Malloc(capacity)
    cdef char *out = buffer + (20 if count else 12)
    cdef object value
    if buffer is NULL:
        raise MemoryError()
    try:
        for i in range(count):
            value = (<list>values)[i]
            if value is None:
                has_null = True
                out = _put_be(out, 0xFFFFFFFFULL, 4)  # length -1: NULL
            elif _to_bits(value, kind, width, &bits):
                out = _put_be(out, width, 4)
                out = _put_be(out, bits, width)
            else:
                return None
        _put_be(buffer, 1 if count else 0, 4)  # dimensions: an empty array has none
        _put_be(buffer + 4, has_null, 4)
        _put_be(buffer + 8, oid, 4)
        if count:
            _put_be(buffer + 12, count, 4)  # length and lower bound of the dimension
            _put_be(buffer + 16, 1, 4)
        return PyBytes_FromStringAndSize(buffer, out - buffer)
    finally:
        PyMem_Free(buffer)
