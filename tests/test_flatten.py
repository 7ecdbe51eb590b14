"""The ``_flatten`` twins: records to per-column lists and row tuples, compiled vs pure."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType, ModuleType
from typing import Any

import pytest
from conftest import IMPLS, twin
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfast import _bulk_plan

pytestmark = pytest.mark.nodb

COLUMNS = ["id", "name", "score"]


@pytest.fixture
def flat(impl: str) -> ModuleType:
    return twin("_flatten", impl)


class Record(Mapping[str, Any]):
    """A mapping that is not a dict."""

    def __init__(self, **values: Any) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_dicts_become_columns_in_record_order(flat: ModuleType) -> None:
    records = [{"id": 1, "name": "a", "score": 1.5}, {"score": 2.5, "id": 2, "name": "b"}]
    assert flat.records_to_columns(records, COLUMNS) == [[1, 2], ["a", "b"], [1.5, 2.5]]


def test_missing_key_is_none(flat: ModuleType) -> None:
    records = [{"id": 1}, {"name": "b"}, {}]
    assert flat.records_to_columns(records, COLUMNS) == [
        [1, None, None],
        [None, "b", None],
        [None, None, None],
    ]


@pytest.mark.parametrize(
    "record",
    [OrderedDict(id=1, name="a"), Record(id=1, name="a"), MappingProxyType({"id": 1, "name": "a"})],
    ids=["dict-subclass", "mapping", "mappingproxy"],
)
def test_any_mapping_is_a_record(flat: ModuleType, record: Mapping[str, Any]) -> None:
    assert flat.records_to_columns([record], COLUMNS) == [[1], ["a"], [None]]
    assert flat.record_to_row(record, COLUMNS) == (1, "a", None)


def test_tuples_and_lists_are_positional(flat: ModuleType) -> None:
    rows = [(1, "a", 1.5), [2, "b", None]]
    assert flat.records_to_columns(rows, COLUMNS) == [[1, 2], ["a", "b"], [1.5, None]]
    assert flat.tuples_to_columns(rows, 3) == [[1, 2], ["a", "b"], [1.5, None]]
    assert flat.records_to_rows(rows, COLUMNS) == [(1, "a", 1.5), (2, "b", None)]


def test_values_are_the_same_objects(flat: ModuleType) -> None:
    payload = {"nested": [1, 2]}
    [column] = flat.records_to_columns([{"doc": payload}], ["doc"])
    assert column[0] is payload


def test_empty_inputs(flat: ModuleType) -> None:
    assert flat.records_to_columns([], COLUMNS) == [[], [], []]
    assert flat.tuples_to_columns([], 2) == [[], []]
    assert flat.records_to_rows([], COLUMNS) == []
    assert flat.keys_of([]) == []
    assert flat.records_to_columns([{}, {}], []) == []


def test_any_iterable_of_records(flat: ModuleType) -> None:
    records = ({"id": i} for i in range(3))
    assert flat.records_to_columns(records, ["id"]) == [[0, 1, 2]]
    assert flat.tuples_to_columns(iter([(1,), (2,)]), 1) == [[1, 2]]


def test_unknown_key_names_key_and_index(flat: ModuleType) -> None:
    records = [{"id": 1}, {"id": 2, "nmae": "typo"}]
    with pytest.raises(ValueError, match=r"record 1 has key 'nmae'.*\['id', 'name', 'score'\]"):
        flat.records_to_columns(records, COLUMNS)
    with pytest.raises(ValueError, match="record 1 has key 'nmae'"):
        flat.records_to_rows(records, COLUMNS)
    with pytest.raises(ValueError, match="record 7 has key 'nmae'"):
        flat.record_to_row(records[1], COLUMNS, 7)
    with pytest.raises(ValueError, match="record 0 has key 'x'"):
        flat.records_to_columns([Record(id=1, x=2)], COLUMNS)


def test_non_record_is_type_error_naming_index(flat: ModuleType) -> None:
    with pytest.raises(TypeError, match="record 2 is of type str, not a mapping"):
        flat.records_to_columns([{}, (1, 2, 3), "abc"], COLUMNS)
    with pytest.raises(TypeError, match="record 1 is of type dict"):
        flat.tuples_to_columns([(1,), {"a": 1}], 1)
    with pytest.raises(TypeError, match="record 0 is of type int"):
        flat.keys_of([5])


def test_wrong_length_names_index_and_lengths(flat: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"record 1 has 2 values, expected 3"):
        flat.records_to_columns([(1, 2, 3), (1, 2)], COLUMNS)
    with pytest.raises(ValueError, match=r"record 0 has 4 values, expected 3"):
        flat.tuples_to_columns([(1, 2, 3, 4)], 3)
    with pytest.raises(ValueError, match=r"record 5 has 1 values, expected 3"):
        flat.records_to_rows([(1,)], COLUMNS, 5)


@pytest.mark.parametrize(
    ("columns", "error", "message"),
    [
        ("id", TypeError, "columns must be a list"),
        (["id", 3], TypeError, "column names must be strings"),
        (["id", "id"], ValueError, "column 'id' is listed twice"),
    ],
)
def test_bad_columns(flat: ModuleType, columns: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        flat.records_to_columns([], columns)
    with pytest.raises(error, match=message):
        flat.record_to_row({}, columns)


@pytest.mark.parametrize("count", [-1, 1.0, True])
def test_bad_column_count(flat: ModuleType, count: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="column_count"):
        flat.tuples_to_columns([], count)


def test_keys_of_first_record(flat: ModuleType) -> None:
    assert flat.keys_of([{"b": 1, "a": 2}, {"c": 3}]) == ["b", "a"]


def test_batch_ends_by_rows(flat: ModuleType) -> None:
    columns = [list(range(10)), [None] * 10]
    assert flat.batch_ends(columns, 4, 1 << 20) == [4, 8, 10]
    assert flat.batch_ends(columns, 10, 1 << 20) == [10]
    assert flat.batch_ends([[], []], 4, 100) == []
    assert flat.batch_ends([], 4, 100) == []


def test_batch_ends_by_bytes(flat: ModuleType) -> None:
    # Each row: two 4-byte element headers + 10 ASCII chars + an 8-byte int = 26.
    columns = [["x" * 10] * 5, [1] * 5]
    assert flat.batch_ends(columns, 100, 52) == [2, 4, 5]
    # Non-ASCII text counts 4 bytes a character, bytes 2 (hex).
    assert flat.batch_ends([["é" * 10] * 3], 100, 44) == [1, 2, 3]
    assert flat.batch_ends([[b"x" * 10] * 3], 100, 48) == [2, 3]
    # A row larger than the budget still gets a batch of its own.
    assert flat.batch_ends([["y" * 100, "z"]], 100, 10) == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([[1]], 0, 10), "max_rows"),
        (([[1]], 1, 0), "max_bytes"),
        (([[1], [1, 2]], 1, 10), "same length"),
        (([(1,)], 1, 10), "per-column lists"),
    ],
)
def test_batch_ends_errors(flat: ModuleType, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        flat.batch_ends(*args)


def test_equal_but_distinct_key_objects(flat: ModuleType) -> None:
    # Keys built at run time are not the column objects: found by lookup, not identity.
    records = [{"".join(["na", "me"]): "a", "".join(["i", "d"]): 1}, {"score": 2, "id": 3}]
    assert flat.records_to_columns(records, COLUMNS) == [[1, 3], ["a", None], [None, 2]]
    with pytest.raises(ValueError, match="record 0 has key 'x'"):
        flat.records_to_columns([{"id": 1, "x": 2, "name": 3}], COLUMNS)


def test_array_literal(flat: ModuleType) -> None:
    values = [1, -2, None, True, False, 1.5, float("inf"), "", "NULL", 'a"b\\c', "{x, y}"]
    assert flat.array_literal(values, None) == (
        '{1,-2,NULL,t,f,1.5,inf,"","NULL","a\\"b\\\\c","{x, y}"}'
    )
    assert flat.array_literal([], None) == "{}"


def test_array_literal_default(flat: ModuleType) -> None:
    def default(value: object) -> str | None:
        return f"<{value}>" if isinstance(value, Decimal) else None

    assert flat.array_literal([Decimal("1.5"), 2], default) == '{"<1.5>",2}'
    assert flat.array_literal([1, object()], default) is None
    assert flat.array_literal([Decimal(1)], None) is None
    with pytest.raises(TypeError, match="default\\(\\) must return a str or None, not int"):
        flat.array_literal([Decimal(1)], lambda value: 5)
    with pytest.raises(TypeError, match="values must be a list, not tuple"):
        flat.array_literal((1,), None)


def test_binary_array(flat: ModuleType) -> None:
    # array_send's layout: ndim, has-null flag, element OID, (length, lower bound) per
    # dimension, then a length word (-1 for NULL) and big-endian bytes per element.
    assert flat.binary_array([1, None, -2], "int4") == bytes.fromhex(
        "00000001 00000001 00000017 00000003 0000000100000004 00000001 ffffffff 00000004 fffffffe"
    )
    assert flat.binary_array([True, False], "bool") == bytes.fromhex(
        "00000001 00000000 00000010 00000002 00000001 00000001 01 00000001 00"
    )
    assert flat.binary_array([-1], "int2") == bytes.fromhex(
        "00000001 00000000 00000015 00000001 00000001 00000002 ffff"
    )
    assert flat.binary_array([2**63 - 1], "int8") == bytes.fromhex(
        "00000001 00000000 00000014 00000001 00000001 00000008 7fffffffffffffff"
    )
    assert flat.binary_array([], "int8") == bytes.fromhex("00000000 00000000 00000014")


def test_binary_array_floats(flat: ModuleType) -> None:
    header = "00000001 00000000 000002bd 00000004 00000001"
    assert flat.binary_array([1.5, -0.0, 3, float("-inf")], "float8") == bytes.fromhex(
        header + "00000008 3ff8000000000000 00000008 8000000000000000"
        "00000008 4008000000000000 00000008 fff0000000000000"
    )
    # Every NaN is PostgreSQL's one NaN, as float8in makes of the text 'nan'.
    negative_nan = -float("nan")
    canonical = flat.binary_array([float("nan")], "float8")
    assert flat.binary_array([negative_nan], "float8") == canonical
    assert canonical is not None and canonical.endswith(bytes.fromhex("7ff8000000000000"))


@pytest.mark.parametrize(
    ("values", "element"),
    [
        ([1, "2"], "int4"),
        ([2**31], "int4"),
        ([-(2**31) - 1], "int4"),
        ([2**15], "int2"),
        ([2**63], "int8"),
        ([True], "int8"),
        ([1.0], "int8"),
        ([1], "bool"),
        ([None, "t"], "bool"),
        ([10**400], "float8"),
        (["1.5"], "float8"),
        ([Decimal("1.5")], "float8"),
    ],
)
def test_binary_array_of_values_that_do_not_fit(
    flat: ModuleType, values: list[Any], element: str
) -> None:
    assert flat.binary_array(values, element) is None


def test_binary_array_errors(flat: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"element must be one of \['bool', .*\], not 'int'"):
        flat.binary_array([1], "int")
    with pytest.raises(ValueError, match="not None"):
        flat.binary_array([1], None)
    with pytest.raises(TypeError, match="values must be a list, not tuple"):
        flat.binary_array((1,), "int4")


def run_isolated(flat: ModuleType, body: str) -> str:
    """Run ``body`` (with ``flat`` imported as ``flat``) in a fresh interpreter: a crash
    there is a failed test, not a dead pytest. Returns what it printed."""
    script = f"import {flat.__name__} as flat\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout.strip()


def test_a_record_that_empties_the_input_cannot_crash_or_skew_the_load(flat: ModuleType) -> None:
    printed = run_isolated(
        flat,
        """
        from collections.abc import Mapping

        class Emptying(Mapping):
            # A record whose methods (user code) empty the list it came in.
            def __init__(self, victim): self.victim = victim
            def __getitem__(self, key): raise KeyError(key)
            def __iter__(self): self.victim.clear(); return iter(["a"])
            def __len__(self): return 1
            def get(self, key, default=None): self.victim.clear(); return "m"

        class EqualEmpties(str):
            # Equal to "b" and hashed alike: a dict lookup of "b" calls its __eq__.
            __hash__ = str.__hash__
            def __eq__(self, other): records.clear(); return str.__eq__(self, other)

        for name in ("records_to_columns", "records_to_rows"):
            records = []
            records += [Emptying(records), {"a": 1, "b": 2}, {"a": [3] * 9, "b": "x" * 99}]
            records += [{"a": 4, EqualEmpties("b"): 5}, (6, 7), Emptying(records), [8, 9]]
            print(getattr(flat, name)(records, ["a", "b"]))
        """,
    ).splitlines()
    nine, many = [3] * 9, "x" * 99
    assert printed == [
        repr([["m", 1, nine, 4, 6, "m", 8], ["m", 2, many, 5, 7, "m", 9]]),
        repr([("m", "m"), (1, 2), (nine, many), (4, 5), (6, 7), ("m", "m"), (8, 9)]),
    ]


def test_tuples_to_columns_reads_a_snapshot(flat: ModuleType) -> None:
    printed = run_isolated(
        flat,
        """
        class Emptying(tuple):
            def __iter__(self): rows.clear(); return tuple.__iter__(self)
            def __len__(self): rows.clear(); return tuple.__len__(self)
            def __getitem__(self, index): rows.clear(); return tuple.__getitem__(self, index)

        rows = []
        rows += [Emptying((1, 2)), (3, 4), [5, 6]]
        print(flat.tuples_to_columns(rows, 2))
        """,
    )
    assert printed == repr([[1, 3, 5], [2, 4, 6]])


def test_array_literal_reads_a_snapshot(flat: ModuleType) -> None:
    # default() empties the list: the values written are still the ones given.
    printed = run_isolated(
        flat,
        """
        values = [object()] + ["x" * 20] * 3000

        def default(value):
            values.clear()
            return "o"

        literal = flat.array_literal(values, default)
        print(literal == "{" + ",".join(['"o"'] + ['"' + "x" * 20 + '"'] * 3000) + "}")
        """,
    )
    assert printed == "True"


class Sub(str):
    """A str subclass: it counts as its str value."""


class Hostile(str):
    """A str subclass whose methods must never be called (hashing works as str's)."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise AssertionError("__eq__ called")

    def __repr__(self) -> str:
        raise AssertionError("__repr__ called")


@pytest.mark.parametrize("kind", [Sub, Hostile])
def test_str_subclass_keys_and_columns_count_as_their_value(
    flat: ModuleType, kind: type[str]
) -> None:
    records = [{kind("id"): 1, kind("t"): "a"}, {"id": 2, kind("t"): "b"}]
    names = flat.keys_of(records)
    assert names == ["id", "t"] and all(type(n) is str for n in names)
    assert flat.records_to_columns(records, names) == [[1, 2], ["a", "b"]]
    assert flat.records_to_columns(records, [kind("t"), kind("id")]) == [["a", "b"], [1, 2]]
    assert flat.records_to_rows(records, [kind("id"), "t"]) == [(1, "a"), (2, "b")]
    assert flat.record_to_row(Record(**{"t": 5}), [kind("t")]) == (5,)
    with pytest.raises(ValueError, match=r"record 1 has key 'x', which is not one of"):
        flat.records_to_columns([{"id": 1}, {kind("x"): 1}], ["id"])
    with pytest.raises(ValueError, match="column 'id' is listed twice"):
        flat.records_to_columns([], ["id", kind("id")])


def test_bulk_insert_plan_takes_str_subclass_keys() -> None:
    # What bulk_insert does before anything is sent: keys_of, then records_to_columns.
    records = [{Sub("id"): 1, Sub("t"): "x"}, {Sub("id"): 2, Sub("t"): "y"}]
    plan = _bulk_plan.plan_insert("items", records, column_types={"id": "int8", "t": "text"})
    assert plan.columns == ("id", "t")
    [query] = plan.queries()
    text, params = query.format()
    assert text.startswith('INSERT INTO "items" ("id", "t") ')
    assert params[1] == '{"x","y"}'


def test_two_keys_for_one_column(flat: ModuleType) -> None:
    class Apart(str):
        # Hashes unlike "id", so a dict holds both; still the column "id".
        __eq__ = str.__eq__

        def __hash__(self) -> int:
            return 7

    with pytest.raises(ValueError, match="record 1 has two keys for column 'id'"):
        flat.records_to_columns([{"id": 1}, {"id": 1, Apart("id"): 2}], ["id"])
    with pytest.raises(ValueError, match="record 4 has two keys for column 'id'"):
        flat.record_to_row({Apart("id"): 1, "id": 2}, ["id"], 4)


def test_a_key_that_is_not_a_str_is_not_a_column(flat: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"record 0 has key 1 of type int: keys must be column"):
        flat.records_to_columns([{1: "a"}], ["id"])

    class Claims:
        __class__ = str  # type: ignore[assignment]

    with pytest.raises(ValueError, match=r"record 0 has key .* of type Claims"):
        flat.records_to_rows([{Claims(): 1}], ["id"])


@pytest.mark.parametrize("count", [1665, 2**62, 2**200])
def test_column_count_over_the_postgresql_limit(flat: ModuleType, count: int) -> None:
    with pytest.raises(ValueError, match="column_count must be between 0 and 1664"):
        flat.tuples_to_columns([(1, 2)], count)
    with pytest.raises(ValueError, match="column_count must be between 0 and 1664"):
        flat.tuples_to_columns([], count)


def test_record_indexes_are_ints_of_any_size(flat: ModuleType) -> None:
    with pytest.raises(ValueError, match=f"record {2**70 + 1} has key 'x'"):
        flat.records_to_rows([{}, {"x": 1}], ["id"], 2**70)
    with pytest.raises(ValueError, match=f"record {-5} has 1 values"):
        flat.record_to_row((1,), ["a", "b"], -5)
    with pytest.raises(TypeError, match="start must be an int"):
        flat.records_to_rows([], ["id"], "0")
    with pytest.raises(TypeError, match="index must be an int"):
        flat.record_to_row({}, ["id"], None)


def test_batch_limits_beyond_a_machine_word(flat: ModuleType) -> None:
    columns = [list(range(5))]
    assert flat.batch_ends(columns, 2**70, 2**70) == [5]
    assert flat.batch_ends(columns, 2, 2**64) == [2, 4, 5]


def test_binary_array_element_may_be_a_str_subclass(flat: ModuleType) -> None:
    assert flat.binary_array([1], Hostile("int4")) == flat.binary_array([1], "int4")


# --- compiled vs pure parity -------------------------------------------------------------

KEYS = ["a", "b", "c", "d"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
)
records = st.one_of(
    st.dictionaries(st.sampled_from([*KEYS, "zz"]), values, max_size=5),
    st.lists(values, min_size=2, max_size=4).map(tuple),
    st.sampled_from([None, 7, "text"]),
)
column_sets = st.lists(st.sampled_from(KEYS), min_size=0, max_size=4, unique=True)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


needs_both = pytest.mark.skipif(len(IMPLS) < 2, reason="compiled twin disabled")


@needs_both
@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=6), column_sets)
def test_parity_records(batch: list[Any], columns: list[str]) -> None:
    compiled, pure = twin("_flatten", "cython"), twin("_flatten", "python")
    for name in ("records_to_columns", "records_to_rows"):
        assert outcome(getattr(compiled, name), batch, columns) == outcome(
            getattr(pure, name), batch, columns
        )
    for index, record in enumerate(batch):
        assert outcome(compiled.record_to_row, record, columns, index) == outcome(
            pure.record_to_row, record, columns, index
        )
    assert outcome(compiled.keys_of, batch) == outcome(pure.keys_of, batch)
    assert outcome(compiled.tuples_to_columns, batch, len(columns)) == outcome(
        pure.tuples_to_columns, batch, len(columns)
    )


@needs_both
@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=3).flatmap(
        lambda width: st.integers(min_value=0, max_value=12).flatmap(
            lambda count: st.lists(
                st.lists(values, min_size=count, max_size=count), min_size=width, max_size=width
            )
        )
    ),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=200),
)
def test_parity_batch_ends(columns: list[list[Any]], max_rows: int, max_bytes: int) -> None:
    compiled, pure = twin("_flatten", "cython"), twin("_flatten", "python")
    ends = compiled.batch_ends(columns, max_rows, max_bytes)
    assert ends == pure.batch_ends(columns, max_rows, max_bytes)
    count = len(columns[0]) if columns else 0
    assert ends == sorted(set(ends))
    assert (ends[-1] if ends else 0) == count
    assert all(b - a <= max_rows for a, b in zip([0, *ends], ends, strict=False))


def decimal_text(value: object) -> str | None:
    return str(value) if isinstance(value, Decimal) else None


@needs_both
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(values, st.decimals(allow_nan=False), st.floats(), st.sampled_from([object])),
        max_size=8,
    ),
    st.sampled_from([None, decimal_text]),
)
def test_parity_array_literal(
    items: list[Any], default: Callable[[Any], str | None] | None
) -> None:
    compiled, pure = twin("_flatten", "cython"), twin("_flatten", "python")
    assert outcome(compiled.array_literal, items, default) == outcome(
        pure.array_literal, items, default
    )


# Values each binary element type holds, and then any value (most of which do not fit).
fitting = {
    "bool": st.booleans(),
    "int2": st.integers(-(2**15), 2**15 - 1),
    "int4": st.integers(-(2**31), 2**31 - 1),
    "int8": st.integers(-(2**63), 2**63 - 1),
    "float8": st.floats() | st.integers(-(2**70), 2**70),
}
misfits = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from([2**15, -(2**15) - 1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**400]),
    st.floats(),
    st.text(max_size=2),
)


@needs_both
@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(fitting)).flatmap(
        lambda element: st.tuples(
            st.just(element),
            st.lists(st.none() | fitting[element], max_size=8),
            st.lists(misfits, max_size=1),
        )
    )
)
def test_parity_binary_array(case: tuple[str, list[Any], list[Any]]) -> None:
    element, items, extra = case
    compiled, pure = twin("_flatten", "cython"), twin("_flatten", "python")
    if not extra:
        assert pure.binary_array(items, element) is not None
    assert outcome(compiled.binary_array, items + extra, element) == outcome(
        pure.binary_array, items + extra, element
    )
