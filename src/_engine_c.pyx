# Compiled twin of pgfast/_engine_py.py; pgfast/_impl.py chooses one of the two for the process.
# cython: freethreading_compatible=True
"""Pipelined queries' hot path, compiled twin of ``pgfast._engine_py``.

Rows are loaded by psycopg's ``Transformer`` (its own compiled loaders when
psycopg's C build is installed); the dicts are built here, without a
Python-level loop, iterator or ``zip`` per row.
"""

from cpython.dict cimport PyDict_New, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

import psycopg
from psycopg import pq

__all__ = ["column_names", "load_rows", "read_results"]

cdef int _PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
cdef int _PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
cdef int _FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
cdef int _COPY_IN = pq.ExecStatus.COPY_IN
cdef int _COPY_OUT = pq.ExecStatus.COPY_OUT
cdef int _COPY_BOTH = pq.ExecStatus.COPY_BOTH


def read_results(pgconn, entries, finish):
    """Match the results waiting on ``pgconn`` (in pipeline mode, input consumed) to
    ``entries``, the statements in flight oldest first, each sent with its own Sync.

    A statement's error (its first) goes to ``entry.error``, its last other
    result to ``entry.result``; when its Sync arrives it leaves ``entries``
    and ``finish(entry)`` is called. Stops when no complete result is waiting.
    """
    cdef bint ended = False
    cdef int status
    is_busy = pgconn.is_busy
    get_result = pgconn.get_result
    while entries and not is_busy():
        res = get_result()
        if res is None:
            if ended:
                break  # nothing more has arrived
            ended = True  # the end of one statement's results
            continue
        ended = False
        entry = entries[0]
        status = res.status
        if status == _PIPELINE_SYNC:
            entries.popleft()
            finish(entry)
        elif status == _FATAL_ERROR:
            if entry.error is None:
                entry.error = res
        elif status == _PIPELINE_ABORTED:
            pass
        elif status == _COPY_IN or status == _COPY_OUT or status == _COPY_BOTH:
            raise psycopg.NotSupportedError(
                "COPY cannot be run by query(): use copy_in, or a dedicated connection"
            )
        else:
            entry.result = res


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
