"""Fuzzing every public entry point of the compiled modules against its pure twin.

Random input, much of it hostile: huge ints, NaNs, surrogates and NUL in
text, ``str``/``int``/``dict``/``list``/``tuple`` subclasses whose methods
raise, lie or mutate the container they came in, objects that claim another
``__class__``, nested structures and generators. Whatever the input, a call
must not crash the interpreter, the pure twin must either return or raise a
clear error (``TypeError``, ``ValueError``, ``IndexError``, or what a hostile
method itself raised), and the compiled twin must give the same result or an
exception of the same class.

Each example is a *recipe* (plain data); the objects are built afresh for
each twin, because a hostile method may change them during the call.
Results are compared through ``canon``, which never calls a method of the
objects it describes.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import pytest
from conftest import IMPLS, twin
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.nodb

COMPILED = "cython" in IMPLS
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Hostile(Exception):
    """What a hostile method raises."""


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise Hostile("hostile method")


# --- hostile types ----------------------------------------------------------------------------

_STR_METHODS = [
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__len__", "__iter__",
    "__getitem__", "__contains__", "__add__", "__radd__", "__mul__", "__mod__", "__str__",
    "__repr__", "__format__", "__bool__", "encode", "replace", "lower", "upper", "isascii",
    "isdigit", "isidentifier", "startswith", "endswith", "find", "index", "split", "join",
    "strip", "translate",
]  # fmt: skip


class RaisingStr(str):
    """Every method raises; hashing works (as str), so it can be a dict key."""

    __hash__ = str.__hash__


for _name in _STR_METHODS:
    setattr(RaisingStr, _name, _boom)


class LyingStr(str):
    """Every method lies about the text."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[str]:
        return iter(["x"])

    def __getitem__(self, index: Any) -> str:
        return "x"

    def __contains__(self, item: object) -> bool:
        return False

    def __str__(self) -> str:
        return "lie"

    def __repr__(self) -> str:
        return "LyingStr()"

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b""

    def replace(self, *args: Any, **kwargs: Any) -> str:
        return "replaced"

    def lower(self) -> str:
        return "select"

    def isascii(self) -> bool:
        return False

    def find(self, *args: Any) -> int:
        return 0


class PlainStr(str):
    """A harmless str subclass."""


class SneakyStr(str):
    """Honest about its length and equality, lying everywhere else."""

    __hash__ = str.__hash__

    def __getitem__(self, index: Any) -> str:
        return "x"

    def __contains__(self, item: object) -> bool:
        return False

    def __iter__(self) -> Iterator[str]:
        return iter("x" * str.__len__(self))

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b""

    def replace(self, *args: Any, **kwargs: Any) -> str:
        return "replaced"

    def find(self, *args: Any) -> int:
        return 0

    def isascii(self) -> bool:
        return True

    def lower(self) -> str:
        return "insert"


class RaisingInt(int):
    __hash__ = int.__hash__


for _name in [
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__index__", "__int__",
    "__and__", "__rand__", "__or__", "__lshift__", "__rlshift__", "__rshift__", "__add__",
    "__radd__", "__sub__", "__mul__", "__format__", "__repr__", "__str__", "__bool__",
    "bit_length", "bit_count",
]:  # fmt: skip
    setattr(RaisingInt, _name, _boom)


class LyingInt(int):
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return True

    def __gt__(self, other: object) -> bool:
        return False

    def __ge__(self, other: object) -> bool:
        return True

    def __index__(self) -> int:
        return 1

    def __and__(self, other: object) -> int:
        return 0

    def __rlshift__(self, other: object) -> int:
        return 0

    def __format__(self, spec: str) -> str:
        return "lie"


class _Victim:
    """A container's hostile methods clear ``victim`` (the input they came in)."""

    victim: list[Any]

    def strike(self) -> None:
        victim = getattr(self, "victim", None)
        if victim is not None:
            victim.clear()


class RaisingDict(dict, _Victim):  # type: ignore[type-arg]
    pass


class LyingDict(dict, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter(["a", "zz", "a"])

    def __len__(self) -> int:
        return 0

    def get(self, key: Any, default: Any = None) -> Any:
        return "lie"

    def keys(self) -> Any:
        return ["b"]


class MutatingDict(dict, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        keys = list(dict.keys(self))
        self.strike()
        dict.clear(self)
        return iter(keys)

    def get(self, key: Any, default: Any = None) -> Any:
        self.strike()
        return dict.get(self, key, default)


class RaisingList(list, _Victim):  # type: ignore[type-arg]
    pass


class LyingList(list, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter([1, "a", None])

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: Any) -> Any:
        return "lie"


class MutatingList(list, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        items = list(list.__iter__(self))
        self.strike()
        list.clear(self)
        return iter(items)

    def __len__(self) -> int:
        self.strike()
        return list.__len__(self)

    def __getitem__(self, index: Any) -> Any:
        self.strike()
        return list.__getitem__(self, index)


class RaisingTuple(tuple, _Victim):  # type: ignore[type-arg]
    pass


class LyingTuple(tuple, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter(["lie"] * 5)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: Any) -> Any:
        return "lie"


class MutatingTuple(tuple, _Victim):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        self.strike()
        return tuple.__iter__(self)

    def __len__(self) -> int:
        self.strike()
        return tuple.__len__(self)


for _cls in (RaisingDict, RaisingList, RaisingTuple):
    for _name in [
        "__iter__", "__len__", "__getitem__", "__contains__", "__eq__", "__bool__", "__repr__",
        "__reversed__", "get", "keys", "items", "values", "copy", "index", "count",
    ]:  # fmt: skip
        if hasattr(_cls, _name) or _name.startswith("__"):
            setattr(_cls, _name, _boom)
    _cls.__hash__ = None  # type: ignore[assignment]
    if _cls is RaisingTuple:
        _cls.__hash__ = tuple.__hash__  # type: ignore[assignment]


class Record(Mapping[Any, Any], _Victim):
    """A mapping that is not a dict, with a ``mode``: "plain", "raise", "lie" or "mutate"."""

    def __init__(self, data: dict[Any, Any], mode: str) -> None:
        self.data = data
        self.mode = mode

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[Any]:
        if self.mode == "raise":
            raise Hostile("__iter__")
        if self.mode == "lie":
            return iter(["zz", *self.data])
        if self.mode == "mutate":
            self.strike()
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: Any, default: Any = None) -> Any:
        if self.mode == "raise":
            raise Hostile("get")
        if self.mode == "lie":
            return "lie"
        if self.mode == "mutate":
            self.strike()
        return self.data.get(key, default)


class ClaimsToBe:
    """An object whose ``__class__`` claims another type."""

    def __init__(self, claimed: type) -> None:
        self.claimed = claimed

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        return object.__getattribute__(self, "claimed")


class EvilBool:
    """A truth value that raises, empties the list it is in, or picks on its selector."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.selector: Any = None
        self.container: Any = None

    def __bool__(self) -> bool:
        if self.mode == "raise":
            raise Hostile("__bool__")
        if self.mode == "clear" and type(self.container) is list:
            self.container.clear()
        if self.selector is not None:
            self.selector.pick()
        return True


# --- comparing results without running user code --------------------------------------------


def canon(value: Any, depth: int = 0) -> Any:
    """A plain description of ``value`` that calls none of its methods."""
    if depth > 50:
        return "..."
    kind = type(value)
    name = kind.__name__
    if value is None or kind is bool:
        return value
    if kind is float:
        return ("float", repr(value))
    if issubclass(kind, str):
        return (name, str.__str__(value))
    if issubclass(kind, int):
        return (name, int.__index__(value))
    if issubclass(kind, bytes | bytearray):
        return (name, bytes.hex(bytes(memoryview(value))))
    if issubclass(kind, tuple):
        return (name, [canon(item, depth + 1) for item in tuple.__iter__(value)])
    if issubclass(kind, list):
        return (name, [canon(item, depth + 1) for item in list.__iter__(value)])
    if issubclass(kind, dict):
        return (
            name,
            [(canon(k, depth + 1), canon(v, depth + 1)) for k, v in dict.items(value)],
        )
    if name == "SQLQuery":
        try:
            text, params = value.format()
        except Exception as exc:
            return ("SQLQuery", type(exc).__name__)
        return ("SQLQuery", text, canon(params, depth + 1))
    if kind is Record:
        return ("Record", object.__getattribute__(value, "mode"))
    return (name,)


CLEAR = (TypeError, ValueError, IndexError, Hostile)


def outcome(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        result = call(*args)
    except CLEAR as exc:
        return "raised", type(exc)
    return "returned", canon(result)


def agree(scenario: Callable[[ModuleType], Any], hot_path: str) -> None:
    """``scenario(module)`` gives the same outcome from both twins (pure only without one)."""
    pure = outcome(scenario, twin(hot_path, "python"))
    if COMPILED:
        assert outcome(scenario, twin(hot_path, "cython")) == pure


# --- recipes ----------------------------------------------------------------------------------

nasty_text = st.one_of(
    st.text(max_size=6),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=6),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\udfff x", "é", "\U0001f600", "x" * 70]),
)
huge_ints = st.one_of(
    st.integers(),
    st.sampled_from([2**31, 2**62, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**30)]),
)
STR_KINDS = ["str", "plain", "raise", "lie", "sneaky"]
INT_KINDS = ["int", "raise", "lie"]


def make_str(kind: str, text: str) -> Any:
    kinds = {"str": str, "plain": PlainStr, "raise": RaisingStr, "lie": LyingStr}
    return (kinds | {"sneaky": SneakyStr})[kind](text)


def make_int(kind: str, number: int) -> Any:
    return {"int": int, "raise": RaisingInt, "lie": LyingInt}[kind](number)


hostile_str = st.tuples(st.just("s"), st.sampled_from(STR_KINDS), nasty_text)
hostile_int = st.tuples(st.just("i"), st.sampled_from(INT_KINDS), huge_ints)
junk = st.sampled_from([None, 1.5, math.nan, b"x", bytearray(b"y"), object, (), [], {}]).map(
    lambda value: ("v", value)
)
scalars = st.one_of(
    st.none().map(lambda v: ("v", v)),
    st.booleans().map(lambda v: ("v", v)),
    huge_ints.map(lambda v: ("v", v)),
    st.floats().map(lambda v: ("v", v)),
    st.binary(max_size=4).map(lambda v: ("v", v)),
    nasty_text.map(lambda v: ("v", v)),
    hostile_str,
    hostile_int,
    st.sampled_from([dict, tuple, list, str, int]).map(lambda t: ("claims", t)),
)
CONTAINERS = ["list", "tuple", "dict", "raise", "lie", "mutate", "gen", "raising-gen"]
values = st.recursive(
    scalars,
    lambda inner: st.tuples(st.just("c"), st.sampled_from(CONTAINERS), st.lists(inner, max_size=3)),
    max_leaves=8,
)


class Builder:
    """Builds objects from recipes; hostile containers strike ``victim`` (the input)."""

    def __init__(self) -> None:
        self.victim: list[Any] = []

    def __call__(self, recipe: Any) -> Any:
        tag = recipe[0]
        if tag == "v":
            return recipe[1]
        if tag == "s":
            return make_str(recipe[1], recipe[2])
        if tag == "i":
            return make_int(recipe[1], recipe[2])
        if tag == "claims":
            return ClaimsToBe(recipe[1])
        if tag == "c":
            return self.container(recipe[1], [self(item) for item in recipe[2]])
        if tag == "rec":
            return self.record(recipe[1], recipe[2])
        raise AssertionError(recipe)

    def container(self, kind: str, items: list[Any]) -> Any:
        if kind == "list":
            return items
        if kind == "tuple":
            return tuple(items)
        if kind == "dict":
            try:
                return {item: index for index, item in enumerate(items)}
            except (TypeError, Hostile):
                return dict(enumerate(items))
        if kind == "gen":
            return (item for item in items)
        if kind == "raising-gen":
            return self.raising_gen(items)
        cls = {"raise": RaisingList, "lie": LyingList, "mutate": MutatingList}[kind]
        built = cls(items)
        built.victim = self.victim
        return built

    @staticmethod
    def raising_gen(items: list[Any]) -> Iterator[Any]:
        yield from items
        raise Hostile("generator")

    def record(self, kind: str, parts: list[tuple[Any, Any]]) -> Any:
        """A record from (key, value) recipes: a dict, mapping or row of any flavour."""
        pairs: list[tuple[Any, Any]] = []
        for key, value in parts:
            built_key = self(key)
            try:
                hash(built_key)
            except Exception:
                continue
            pairs.append((built_key, self(value)))
        row = [value for _, value in pairs]
        if kind in ("tuple", "list"):
            return tuple(row) if kind == "tuple" else row
        if kind in ("raise-list", "lie-list", "mutate-list", "raise-tuple", "lie-tuple"):
            cls = {
                "raise-list": RaisingList,
                "lie-list": LyingList,
                "mutate-list": MutatingList,
                "raise-tuple": RaisingTuple,
                "lie-tuple": LyingTuple,
            }[kind]
            built = cls(row)
        elif kind == "mutate-tuple":
            built = MutatingTuple(row)
        else:
            try:
                data = dict(pairs)
            except Exception:
                reject()
            if kind == "dict":
                return data
            if kind.startswith("mapping-"):
                built = Record(data, kind.removeprefix("mapping-"))
            else:
                cls = {
                    "raise-dict": RaisingDict,
                    "lie-dict": LyingDict,
                    "mutate-dict": MutatingDict,
                }[kind]
                built = cls(data)
        built.victim = self.victim
        return built


COLUMNS = ["a", "b", "c"]
column_names = st.sampled_from(COLUMNS).map(lambda name: ("v", name))
keys = st.one_of(
    column_names,
    column_names,
    st.tuples(st.just("s"), st.sampled_from(STR_KINDS), st.sampled_from([*COLUMNS, "zz", ""])),
    st.tuples(st.just("v"), st.sampled_from([1, None, 2.5, b"a"])),
    hostile_int,
)
RECORD_KINDS = [
    "dict", "dict", "dict", "tuple", "list", "raise-list", "lie-list", "mutate-list",
    "raise-tuple", "lie-tuple", "mutate-tuple", "raise-dict", "lie-dict", "mutate-dict",
    "mapping-plain", "mapping-raise", "mapping-lie", "mapping-mutate",
]  # fmt: skip
some_record = st.tuples(
    st.just("rec"), st.sampled_from(RECORD_KINDS), st.lists(st.tuples(keys, values), max_size=4)
)
records = st.one_of(some_record, some_record, some_record, scalars)
good_columns = st.lists(st.sampled_from(COLUMNS), unique=True, max_size=3).map(
    lambda names: ("c", "list", [("v", name) for name in names])
)
column_lists = st.one_of(
    good_columns,
    good_columns,
    st.tuples(
        st.just("c"),
        st.sampled_from(["list", "tuple", "raise", "lie", "mutate", "gen"]),
        st.lists(
            st.one_of(
                st.tuples(st.just("s"), st.sampled_from(STR_KINDS), st.sampled_from(COLUMNS)),
                st.tuples(st.just("v"), st.sampled_from([*COLUMNS, 1, None])),
            ),
            max_size=4,
        ),
    ),
    junk,
    hostile_str,
)
INPUTS = ["list", "list", "tuple", "gen", "raising-gen", "raise", "lie", "mutate"]
indexes = st.one_of(huge_ints.map(lambda v: ("v", v)), hostile_int, junk)


def build_batch(build: Builder, kind: str, recipes: list[Any]) -> Any:
    """The input container; every hostile record strikes the list it came in."""
    build.victim.extend(build(recipe) for recipe in recipes)
    items = build.victim
    if kind == "list":
        return items
    return build.container(kind, list(items))


# --- _flatten ---------------------------------------------------------------------------------

batches = st.tuples(st.sampled_from(INPUTS), st.lists(records, max_size=5))


# A mapping whose get() empties the input list, before another record: the
# compiled twin used to read the emptied list (a crash), the pure one skewed the load.
EMPTIES_ITS_LIST = (
    "list",
    [
        ("rec", "mapping-mutate", [(("v", "a"), ("v", 1))]),
        ("rec", "dict", [(("v", "a"), ("v", 2))]),
    ],
)


@SETTINGS
@given(st.sampled_from(["records_to_columns", "records_to_rows", "keys_of"]), batches, column_lists)
@example("records_to_columns", EMPTIES_ITS_LIST, ("v", ["a"]))
@example("records_to_rows", EMPTIES_ITS_LIST, ("v", ["a"]))
def test_flatten_batches(name: str, batch: tuple[str, list[Any]], columns: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        given_batch = build_batch(build, *batch)
        if name == "keys_of":
            return mod.keys_of(given_batch)
        return getattr(mod, name)(given_batch, build(columns))

    agree(scenario, "_flatten")


@SETTINGS
@given(batches, column_lists, indexes)
def test_flatten_rows_with_start(batch: tuple[str, list[Any]], columns: Any, start: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return mod.records_to_rows(build_batch(build, *batch), build(columns), build(start))

    agree(scenario, "_flatten")


@SETTINGS
@given(records, column_lists, indexes)
def test_flatten_record_to_row(record: Any, columns: Any, index: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return mod.record_to_row(build(record), build(columns), build(index))

    agree(scenario, "_flatten")


@SETTINGS
@given(
    batches,
    st.one_of(
        st.integers(-2, 6).map(lambda v: ("v", v)),
        indexes,
        st.sampled_from([2**62, 2**31, 1665, 1664]).map(lambda v: ("v", v)),
    ),
)
def test_flatten_tuples_to_columns(batch: tuple[str, list[Any]], count: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return mod.tuples_to_columns(build_batch(build, *batch), build(count))

    agree(scenario, "_flatten")


@SETTINGS
@given(
    st.one_of(
        st.tuples(
            st.just("c"),
            st.sampled_from(["list", "tuple", "raise", "mutate", "gen"]),
            st.lists(
                st.one_of(
                    st.tuples(
                        st.just("c"),
                        st.sampled_from(["list", "list", "list", "tuple", "lie", "mutate"]),
                        st.lists(scalars, min_size=2, max_size=2),
                    ),
                    scalars,
                ),
                max_size=3,
            ),
        ),
        junk,
    ),
    st.one_of(huge_ints.map(lambda v: ("v", v)), hostile_int, junk),
    st.one_of(huge_ints.map(lambda v: ("v", v)), hostile_int, junk),
)
def test_flatten_batch_ends(columns: Any, max_rows: Any, max_bytes: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return mod.batch_ends(build(columns), build(max_rows), build(max_bytes))

    agree(scenario, "_flatten")


DEFAULTS = ["none", "str", "none-result", "int", "raise", "mutate", "subclass", "lie"]


@SETTINGS
@given(
    st.sampled_from(["list", "list", "tuple", "raise", "mutate"]),
    st.lists(values, max_size=6),
    st.sampled_from(DEFAULTS),
)
# default() empties the list: the compiled twin used to read past its end (a crash).
@example("list", [("v", object())] + [("v", "x" * 50)] * 200, "mutate")
def test_flatten_array_literal(kind: str, items: list[Any], default: str) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        given_values = build_batch(build, kind, items)
        victim = build.victim

        def text(value: Any) -> Any:
            if default == "none-result":
                return None
            if default == "int":
                return 5
            if default == "raise":
                raise Hostile("default")
            if default == "mutate":
                victim.clear()
                return "gone"
            if default == "subclass":
                return PlainStr("sub")
            if default == "lie":
                return LyingStr('a"b')
            return f"<{type(value).__name__}>"

        return mod.array_literal(given_values, None if default == "none" else text)

    agree(scenario, "_flatten")


@SETTINGS
@given(
    st.sampled_from(["list", "list", "tuple", "raise", "mutate"]),
    st.lists(
        st.one_of(scalars, st.sampled_from([0, 1, -1, True, 2.5]).map(lambda v: ("v", v))),
        max_size=6,
    ),
    st.one_of(
        st.tuples(
            st.just("s"),
            st.sampled_from(STR_KINDS),
            st.sampled_from(["bool", "int2", "int4", "int8", "float8", "int", "text"]),
        ),
        junk,
    ),
)
def test_flatten_binary_array(kind: str, items: list[Any], element: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return mod.binary_array(build_batch(build, kind, items), build(element))

    agree(scenario, "_flatten")


# --- _compose ---------------------------------------------------------------------------------

TEMPLATE_PIECES = [
    "{}", "{0}", "{1}", "{x}", "{y}", "{{", "}}", "{", "}", " ", "a", "$", "\x00", "\ud800",
    "{!r}", "{:>3}", "{x.y}", "é",
]  # fmt: skip
templates = st.one_of(
    st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=6).map("".join), nasty_text
)
fragments = st.recursive(
    st.one_of(
        st.tuples(st.just("value"), values),
        st.tuples(st.just("ident"), st.lists(st.one_of(hostile_str, junk), min_size=0, max_size=3)),
        st.tuples(st.just("unsafe"), st.one_of(hostile_str, junk)),
        st.tuples(st.just("unbuilt")),
    ),
    lambda inner: st.one_of(
        st.tuples(
            st.just("sql"),
            st.tuples(st.sampled_from(STR_KINDS), templates),
            st.lists(st.one_of(inner, values), max_size=3),
            st.lists(st.tuples(st.sampled_from(["x", "y"]), st.one_of(inner, values)), max_size=2),
        ),
        st.tuples(
            st.just("join"),
            st.sampled_from(["list", "tuple", "gen", "raise", "lie", "mutate"]),
            st.lists(inner, max_size=3),
            st.one_of(
                st.tuples(
                    st.just("s"),
                    st.sampled_from(STR_KINDS),
                    st.sampled_from([", ", " AND ", "x", ""]),
                ),
                junk,
                inner,
            ),
        ),
        st.tuples(st.just("add"), inner, st.one_of(inner, values)),
        st.tuples(st.just("pickle"), inner),
    ),
    max_leaves=6,
)


def build_fragment(mod: ModuleType, build: Builder, recipe: Any) -> Any:
    """An SQLQuery (or an error) built with ``mod`` from a fragment recipe."""
    sql = mod.sql
    kind = recipe[0]
    if kind == "value":
        return sql.value(build(recipe[1]))
    if kind == "ident":
        return sql.ident(*[build(name) for name in recipe[1]])
    if kind == "unsafe":
        return sql.unsafe(build(recipe[1]))
    if kind == "unbuilt":
        return mod.SQLQuery.__new__(mod.SQLQuery)
    if kind == "sql":
        template = make_str(*recipe[1])
        args = [fragment_or_value(mod, build, item) for item in recipe[2]]
        kwargs = {name: fragment_or_value(mod, build, item) for name, item in recipe[3]}
        return sql(template, *args, **kwargs)
    if kind == "join":
        items = [build_fragment(mod, build, item) for item in recipe[2]]
        queries = build.container(recipe[1], items)
        return sql.join(queries, fragment_or_value(mod, build, recipe[3]))
    if kind == "add":
        return build_fragment(mod, build, recipe[1]) + fragment_or_value(mod, build, recipe[2])
    if kind == "pickle":
        query = build_fragment(mod, build, recipe[1])
        try:
            data = pickle.dumps(query)
        except (pickle.PicklingError, AttributeError):  # a parameter pickle cannot handle
            reject()
        return pickle.loads(data)
    raise AssertionError(recipe)


def fragment_or_value(mod: ModuleType, build: Builder, recipe: Any) -> Any:
    if recipe[0] in ("value", "ident", "unsafe", "unbuilt", "sql", "join", "add", "pickle"):
        return build_fragment(mod, build, recipe)
    return build(recipe)


@SETTINGS
@given(fragments)
def test_compose_fragments(recipe: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        query = build_fragment(mod, Builder(), recipe)
        again = build_fragment(mod, Builder(), recipe)  # equal, made of other objects
        results: list[Any] = [canon(query)]
        for method in (repr, hash, lambda q: q == q, lambda q: q == again, mod.is_sql_query):
            results.append(outcome(method, query))
        return results

    agree(scenario, "_compose")


@SETTINGS
@given(
    st.one_of(st.tuples(st.sampled_from(STR_KINDS), templates).map(lambda r: ("s", *r)), junk),
    st.one_of(
        st.tuples(st.just("c"), st.sampled_from(CONTAINERS), st.lists(values, max_size=3)), junk
    ),
    st.one_of(
        st.tuples(
            st.sampled_from(["dict", "raise", "lie", "mutate"]),
            st.lists(
                st.tuples(
                    st.one_of(
                        st.tuples(
                            st.just("s"),
                            st.sampled_from(STR_KINDS),
                            st.sampled_from(["x", "y", "1"]),
                        ),
                        st.tuples(st.just("v"), st.sampled_from([1, None])),
                    ),
                    values,
                ),
                max_size=3,
            ),
        ),
        junk,
    ),
)
def test_compose_direct(template: Any, args: Any, kwargs: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        if kwargs[0] == "v":
            given_kwargs = build(kwargs)
        else:
            record = build.record(
                {"dict": "dict", "raise": "raise-dict", "lie": "lie-dict", "mutate": "mutate-dict"}[
                    kwargs[0]
                ],
                kwargs[1],
            )
            given_kwargs = record
        return mod.compose(build(template), build(args), given_kwargs)

    agree(scenario, "_compose")


@SETTINGS
@given(
    st.lists(st.one_of(hostile_str, junk, values), max_size=3), st.one_of(hostile_str, junk, values)
)
def test_compose_helpers(names: list[Any], other: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        return [
            outcome(lambda: mod.ident(*[build(name) for name in names])),
            outcome(lambda: mod.unsafe(build(other))),
            outcome(lambda: mod.value(build(other))),
            outcome(lambda: mod.is_sql_query(build(other))),
            outcome(lambda: mod.sql.join([mod.sql("a")], build(other))),
            outcome(lambda: mod.sql("x") + build(other)),
            outcome(lambda: build(other) + mod.sql("x")),
            outcome(lambda: mod._restore(build(other), ())),
            outcome(lambda: mod._restore(("", ""), build(other))),
            outcome(lambda: mod._restore(build(other), build(other))),
        ]

    agree(scenario, "_compose")


def test_compose_file_with_odd_paths(tmp_path: Any) -> None:
    (tmp_path / "q.sql").write_bytes(b"SELECT 1")
    (tmp_path / "bad.sql").write_bytes(b"\xff")
    paths = [str(tmp_path / "q.sql"), PlainStr(tmp_path / "q.sql"), str(tmp_path / "bad.sql"),
             None, 5, "a\x00b", RaisingStr("x")]  # fmt: skip

    def scenario(mod: ModuleType) -> Any:
        return [outcome(mod.file, path) for path in paths]

    agree(scenario, "_compose")


# --- _classify --------------------------------------------------------------------------------

sql_text = st.lists(
    st.sampled_from(["SELECT", "select", " ", "1", "(", ")", ";", "'", '"', "$$", "$a$", "--",
                     "/*", "*/", "\n", "\x00", "\ud800", "nextval", "FOR", "UPDATE", "E'", "U&",
                     "\\", "é", "WITH", "EXPLAIN", "x", "SELECT 1", "select a from t",
                     "WITH a AS (SELECT 1) SELECT * FROM a", "EXPLAIN SELECT 1", "SELECT 1;"]),
    max_size=8,
).map("".join)  # fmt: skip


@SETTINGS
@given(
    st.one_of(
        st.tuples(st.just("s"), st.sampled_from(STR_KINDS), st.one_of(sql_text, nasty_text)),
        junk,
        hostile_int,
    )
)
def test_classify(text: Any) -> None:
    def scenario(mod: ModuleType) -> Any:
        return mod.is_read_only(Builder()(text))

    agree(scenario, "_classify")


def test_classify_constants_agree() -> None:
    pure = twin("_classify", "python")
    if COMPILED:
        compiled = twin("_classify", "cython")
        assert compiled.WRITE_FUNCTIONS == pure.WRITE_FUNCTIONS
        assert compiled.WRITE_FUNCTION_PREFIXES == pure.WRITE_FUNCTION_PREFIXES


# --- _selector --------------------------------------------------------------------------------

node_index = st.one_of(st.integers(-2, 5).map(lambda v: ("v", v)), hostile_int, junk)
eligibles = st.one_of(
    st.none().map(lambda v: ("v", v)),
    st.integers(-1, 2**65).map(lambda v: ("v", v)),
    hostile_int,
    junk,
    hostile_str,
    st.tuples(
        st.just("bools"),
        st.sampled_from(["list", "tuple", "raise", "lie", "mutate"]),
        st.lists(st.sampled_from([True, False, 0, 1, "raise", "pick", "clear"]), max_size=5),
    ),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), eligibles),
        st.tuples(
            st.sampled_from(["release", "mark_down", "mark_up", "is_up", "in_flight"]), node_index
        ),
        st.tuples(st.sampled_from(["snapshot", "repr", "node_count", "strategy"])),
    ),
    max_size=12,
)


@SETTINGS
@given(
    st.one_of(st.integers(-1, 66).map(lambda v: ("v", v)), hostile_int, junk),
    st.one_of(
        st.tuples(
            st.just("s"),
            st.sampled_from(STR_KINDS),
            st.sampled_from(["round_robin", "random", "least_busy", "x"]),
        ),
        junk,
    ),
    st.one_of(huge_ints.map(lambda v: ("v", v)), hostile_int, junk),
    operations,
)
def test_selector(count: Any, strategy: Any, seed: Any, steps: list[Any]) -> None:
    def scenario(mod: ModuleType) -> Any:
        build = Builder()
        selector = mod.Selector(build(count), build(strategy), build(seed))
        log = []
        for step in steps:
            op = step[0]
            if op == "pick":
                eligible = eligible_of(build, step[1], selector)
                log.append(outcome(selector.pick, eligible))
            elif op in ("snapshot", "repr"):
                log.append(outcome(getattr(selector, "__repr__" if op == "repr" else op)))
            elif op in ("node_count", "strategy"):
                log.append(canon(getattr(selector, op)))
            else:
                index = build(step[1])
                log.append(outcome(getattr(selector, op), index))
        return log

    agree(scenario, "_selector")


def eligible_of(build: Builder, recipe: Any, selector: Any) -> Any:
    if recipe[0] != "bools":
        return build(recipe)
    items: list[Any] = []
    evils = []
    for item in recipe[2]:
        if item in ("raise", "pick", "clear"):
            evil = EvilBool(item)
            evil.selector = selector if item == "pick" else None
            evils.append(evil)
            items.append(evil)
        else:
            items.append(item)
    built = build.container(recipe[1], items)
    for evil in evils:
        evil.container = built
    return built


def test_selector_reads_subclasses_by_value() -> None:
    for impl in IMPLS:
        selector = twin("_selector", impl).Selector(LyingInt(3), PlainStr("least_busy"))
        assert (selector.node_count, type(selector.strategy)) == (3, str)
        assert [selector.pick() for _ in range(3)] == [0, 1, 2]
        assert selector.mark_down(LyingInt(2)) is True
        assert selector.pick(LyingInt(4)) == -1


def test_selector_eligible_emptied_by_a_truth_value_cannot_crash(impl: str) -> None:
    # The compiled twin used to read the emptied list past its end: run it apart.
    module = twin("_selector", impl).__name__
    script = f"""if True:
        from {module} import Selector
        eligible = []

        class Empties:
            def __bool__(self):
                eligible.clear()
                return True

        eligible += [Empties()] + [True] * 7
        print(Selector(8, seed=1).pick(eligible), Selector(8).pick([False, Empties()] + [True] * 6))
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1"]


def test_is_read_only_reads_a_str_subclass_by_its_value(impl: str) -> None:
    classify = twin("_classify", impl)
    assert classify.is_read_only(SneakyStr("SELECT 1")) is True
    assert classify.is_read_only(LyingStr("SELECT 1")) is True
    assert classify.is_read_only(RaisingStr("DELETE FROM t")) is False
    with pytest.raises(TypeError, match="not ClaimsToBe"):
        classify.is_read_only(ClaimsToBe(str))
