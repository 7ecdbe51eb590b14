"""Turn bulk-loading records into per-column lists or row tuples (compiled twin).

Same names and behaviour as ``pgfast._flatten_py``, errors included (both
build them with ``pgfast._flatten_messages``); library code takes whichever
``pgfast._impl.flatten`` chose.
"""

from collections.abc import Mapping

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

# Error paths only: one source of truth for the messages both twins raise.
from pgfast._flatten_messages import (
    BINARY_ELEMENTS,
    bad_columns,
    bad_count,
    bad_element,
    not_a_record,
    unknown_key,
    wrong_length,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    # Borrowed-pointer forms for the records_to_columns inner loop: no refcount
    # traffic beyond the one reference each column list takes.
    bint _is_exact_dict "PyDict_CheckExact"(PyObject *)
    Py_ssize_t _dict_size "PyDict_GET_SIZE"(PyObject *)
    PyObject *_dict_get "PyDict_GetItem"(PyObject *, PyObject *)
    PyObject *_seq_item "PySequence_Fast_GET_ITEM"(PyObject *, Py_ssize_t)
    void _list_set "PyList_SET_ITEM"(PyObject *, Py_ssize_t, PyObject *)
    void _incref "Py_INCREF"(PyObject *)
    bint _dict_next "PyDict_Next"(PyObject *, Py_ssize_t *, PyObject **, PyObject **)
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


cdef tuple _checked_columns(object columns):
    """``columns`` as a tuple of distinct str, else the error the pure twin raises."""
    cdef tuple names
    cdef object name
    if isinstance(columns, (list, tuple)):
        names = tuple(columns)
        if len(frozenset(names)) == len(names):
            for name in names:
                if type(name) is not str:
                    break
            else:
                return names
    raise bad_columns(columns)


cdef inline void _put(object items, Py_ssize_t i, object value, bint is_list):
    # SET_ITEM steals a reference; the containers are freshly allocated.
    Py_INCREF(value)
    if is_list:
        PyList_SET_ITEM(items, i, value)
    else:
        PyTuple_SET_ITEM(items, i, value)


cdef object _unknown_key_error(object record, Py_ssize_t index, tuple names):
    """The error for the first key of ``record`` that is not a column, or None."""
    cdef frozenset allowed = frozenset(names)
    cdef object key
    for key in record:
        if key not in allowed:
            return unknown_key(key, index, names)
    return None


cdef object _check_mapping(object record, Py_ssize_t index, tuple names):
    """A generic (non-dict) mapping: reject keys that are not columns."""
    error = _unknown_key_error(record, index, names)
    if error is not None:
        raise error


cdef object _unknown_dict_key(dict record, Py_ssize_t index, tuple names):
    # Called once a dict is known to hold a key that is not a column.
    error = _unknown_key_error(record, index, names)
    if error is None:
        raise AssertionError("a dict key was not found in the dict")
    return error


cdef int _fill(object record, Py_ssize_t index, tuple names, list out) except -1:
    """Store ``record``'s value of column ``j`` in ``out[j][index]``."""
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t j, found = 0
    cdef PyObject *item
    cdef object value
    cdef type kind = type(record)
    if kind is tuple or kind is list:  # before the (slow) Mapping check
        if len(record) != width:
            raise wrong_length(len(record), index, width)
        for j in range(width):
            _put(out[j], index, record[j], True)
        return 0
    if kind is dict:
        for j in range(width):
            item = PyDict_GetItem(record, names[j])
            if item is NULL:
                value = None
            else:
                value = <object>item
                found += 1
            _put(out[j], index, value, True)
        if found != len(<dict>record):
            raise _unknown_dict_key(record, index, names)
        return 0
    if isinstance(record, (tuple, list)) and not isinstance(record, Mapping):
        if len(record) != width:
            raise wrong_length(len(record), index, width)
        for j in range(width):
            _put(out[j], index, record[j], True)
        return 0
    if isinstance(record, Mapping):
        _check_mapping(record, index, names)
        getter = record.get
        for j in range(width):
            _put(out[j], index, getter(names[j]), True)
        return 0
    raise not_a_record(record, index)


cdef tuple _row(object record, Py_ssize_t index, tuple names):
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t j, found = 0
    cdef PyObject *item
    cdef object value
    cdef tuple row
    cdef type kind = type(record)
    if kind is tuple or kind is list:  # before the (slow) Mapping check
        if len(record) != width:
            raise wrong_length(len(record), index, width)
        return tuple(record)
    if kind is dict:
        row = PyTuple_New(width)
        for j in range(width):
            item = PyDict_GetItem(record, names[j])
            if item is NULL:
                value = None
            else:
                value = <object>item
                found += 1
            _put(row, j, value, False)
        if found != len(<dict>record):
            raise _unknown_dict_key(record, index, names)
        return row
    if isinstance(record, Mapping):
        _check_mapping(record, index, names)
        return tuple(map(record.get, names))
    if isinstance(record, (tuple, list)):
        if len(record) != width:
            raise wrong_length(len(record), index, width)
        return tuple(record)
    raise not_a_record(record, index)


def keys_of(records):
    """The first record's keys, in order: the columns when none are given (``[]`` if empty)."""
    if not records:
        return []
    first = records[0]
    if not isinstance(first, Mapping):
        raise not_a_record(first, 0)
    return list(first)


def record_to_row(record, columns, index=0):
    """One record as a tuple in ``columns`` order (for COPY); ``index`` is used in errors."""
    return _row(record, index, _checked_columns(columns))


def records_to_rows(records, columns, start=0):
    """Every record as a tuple in ``columns`` order; record indexes in errors begin at ``start``."""
    cdef tuple names = _checked_columns(columns)
    cdef Py_ssize_t index = start
    cdef list rows = []
    for record in records:
        rows.append(_row(record, index, names))
        index += 1
    return rows


cdef list _new_columns(Py_ssize_t width, Py_ssize_t count):
    cdef list out = PyList_New(width)
    cdef Py_ssize_t j
    for j in range(width):
        _put(out, j, PyList_New(count), True)
    return out


def records_to_columns(records, columns):
    """One list per column holding that column's values in record order."""
    cdef tuple names = _checked_columns(columns)
    if type(records) is not list and type(records) is not tuple:
        records = list(records)
    cdef Py_ssize_t width = len(names)
    cdef Py_ssize_t count = len(records)
    cdef list out = _new_columns(width, count)
    cdef PyObject **keys = <PyObject **>PyMem_Malloc((width + 1) * sizeof(PyObject *))
    cdef PyObject **lists = <PyObject **>PyMem_Malloc((width + 1) * sizeof(PyObject *))
    cdef PyObject *record
    cdef PyObject *item
    cdef PyObject *none = <PyObject *>None
    cdef PyObject *key
    cdef Py_ssize_t i, j, found, position
    if keys is NULL or lists is NULL:
        PyMem_Free(keys)
        PyMem_Free(lists)
        raise MemoryError()
    try:
        for j in range(width):
            keys[j] = <PyObject *>names[j]
            lists[j] = <PyObject *>out[j]
        for i in range(count):
            record = _seq_item(<PyObject *>records, i)
            if not _is_exact_dict(record):
                _fill(<object>record, i, names, out)
                continue
            # Records built alike share their key objects, in column order:
            # take values in dict order while the keys match, then look up.
            position = 0
            found = 0
            while found < width and _dict_next(record, &position, &key, &item):
                if key != keys[found]:
                    break
                _incref(item)
                _list_set(lists[found], i, item)
                found += 1
            for j in range(found, width):
                item = _dict_get(record, keys[j])
                if item is NULL:
                    item = none
                else:
                    found += 1
                _incref(item)
                _list_set(lists[j], i, item)
            if found != _dict_size(record):
                raise _unknown_dict_key(<dict>record, i, names)
    finally:
        PyMem_Free(keys)
        PyMem_Free(lists)
    return out


def tuples_to_columns(rows, column_count):
    """Transpose tuple/list rows of ``column_count`` values into one list per column."""
    if type(column_count) is not int or column_count < 0:
        raise bad_count(column_count)
    if not isinstance(rows, (list, tuple)):
        rows = list(rows)
    cdef Py_ssize_t width = column_count
    cdef Py_ssize_t count = len(rows)
    cdef list out = _new_columns(width, count)
    cdef Py_ssize_t i, j
    cdef object row
    for i in range(count):
        row = rows[i]
        if not isinstance(row, (tuple, list)):
            raise not_a_record(row, i)
        if len(row) != width:
            raise wrong_length(len(row), i, width)
        for j in range(width):
            _put(out[j], i, row[j], True)
    return out


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


def batch_ends(columns, max_rows, max_bytes):
    """End offsets splitting rows into batches of at most ``max_rows`` rows and about
    ``max_bytes`` bytes of parameters (a single larger row still gets its own batch)."""
    if type(max_rows) is not int or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, not {max_rows!r}")
    if type(max_bytes) is not int or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, not {max_bytes!r}")
    if not isinstance(columns, (list, tuple)) or not all(type(c) is list for c in columns):
        raise TypeError("columns must be a list of per-column lists")
    if not columns:
        return []
    cdef tuple lists = tuple(columns)
    cdef Py_ssize_t width = len(lists)
    cdef Py_ssize_t count = len(lists[0])
    cdef Py_ssize_t limit_rows = max_rows
    cdef long long limit_bytes = max_bytes
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
    """
    if type(values) is not list:
        raise TypeError(f"values must be a list, not {type(values).__name__}")
    cdef list parts = ["{"]
    cdef Py_ssize_t i, count = len(<list>values)
    cdef object value, text
    cdef type kind
    for i in range(count):
        if i:
            parts.append(",")
        value = (<list>values)[i]
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
