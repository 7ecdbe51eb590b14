# cython: freethreading_compatible=True
"""The per-result hot path of pipelined queries, compiled twin of ``pgfast._engine_py``.

Rows are loaded by psycopg's ``Transformer`` (its own compiled loaders when
psycopg's C build is installed); the dicts are built here, without a
Python-level loop, iterator or ``zip`` per row.
"""

from cpython.dict cimport PyDict_New, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

__all__ = ["column_names", "load_rows"]


def column_names(result, str encoding):
    """The result's column names, decoded."""
    fname = result.fname
    return [fname(i).decode(encoding) for i in range(result.nfields)]


def load_rows(tx, result, bint dicts, str encoding):
    """Every row of ``result`` (a ``psycopg.pq.PGresult`` of TUPLES_OK) through the
    psycopg ``Transformer`` ``tx``: dicts keyed by column name, or tuples."""
    tx.set_pgresult(result)
    cdef Py_ssize_t ntuples = result.ntuples
    cdef list rows = tx.load_rows(0, ntuples, tuple)
    if not dicts or not rows:
        return rows
    cdef list names = column_names(result, encoding)
    cdef Py_ssize_t ncols = PyList_GET_SIZE(names)
    cdef Py_ssize_t n = PyList_GET_SIZE(rows)
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i, j
    cdef tuple row
    cdef dict d
    for i in range(n):
        row = <tuple>PyList_GET_ITEM(rows, i)
        if PyTuple_GET_SIZE(row) != ncols:
            raise ValueError("a row's length differs from the number of columns")
        d = PyDict_New()
        for j in range(ncols):
            PyDict_SetItem(d, <object>PyList_GET_ITEM(names, j), <object>PyTuple_GET_ITEM(row, j))
        Py_INCREF(d)
        PyList_SET_ITEM(out, i, d)
    return out
