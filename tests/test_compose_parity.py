"""Property tests: random fragment trees give the same text and params from both twins.

A tree is drawn as plain data (a *recipe*), built with each implementation's
``sql`` and checked against a reference model: the text and parameter list
follow from the recipe alone, parameters are numbered ``$1..$n`` in order of
appearance, no value ever reaches the text, and a ``$n`` that would run into a
word character next to it is the same ``ValueError`` from both.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import IMPLS, twin
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.nodb

# Literal SQL never contains MARK; every string value starts with it, so a value
# that leaked into the text would be seen.
MARK = "\u00a7"
SEPARATORS = ["", ",", ", ", " AND ", " OR ", ") AND (", ") OR (", ";", "\n"]
tricky = st.sampled_from(
    ["$1", "$2", "{", "}", "{}", "{0}", "'", '"', "''", "\\", "--", "/*", "\x00"]
)
raw_text = (
    st.lists(st.one_of(tricky.filter(lambda s: s != "\x00"), st.text(max_size=4)), max_size=3)
    .map("".join)
    .filter(lambda s: MARK not in s)
)
# Padded text keeps many trees valid: bare text often runs into a $n (an error).
literal_text = st.one_of(raw_text, raw_text.map(lambda s: f" {s} "))
values = st.one_of(
    st.lists(st.one_of(tricky, st.text(max_size=4)), max_size=3).map(lambda p: MARK + "".join(p)),
    st.integers(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3),
)
names = st.text(min_size=1, max_size=8).filter(
    lambda s: "\x00" not in s and MARK not in s and len(s.encode()) <= 63
)


@dataclass(frozen=True)
class Recipe:
    kind: str  # "raw" (a plain argument), "value", "ident", "unsafe", "sql", "join", "add"
    data: Any = None
    children: tuple[Recipe, ...] = ()


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@st.composite
def _sql_node(draw: st.DrawFn, children: st.SearchStrategy[Recipe]) -> Recipe:
    args = tuple(draw(st.lists(children, max_size=4)))
    mode = draw(st.sampled_from(["auto", "manual", "named"]))
    if mode == "auto":
        order = list(range(len(args)))
    else:  # fields may repeat an argument and come in any order; each is used
        order = draw(st.permutations(range(len(args))))
        order += draw(st.lists(st.sampled_from(order), max_size=2)) if order else []
    literals = draw(st.lists(literal_text, min_size=len(order) + 1, max_size=len(order) + 1))
    return Recipe("sql", (mode, tuple(order), tuple(literals)), args)


def _leaf() -> st.SearchStrategy[Recipe]:
    return st.one_of(
        st.builds(Recipe, st.just("raw"), values),
        st.builds(Recipe, st.just("value"), values),
        st.builds(Recipe, st.just("ident"), st.lists(names, min_size=1, max_size=3).map(tuple)),
        st.builds(Recipe, st.just("unsafe"), literal_text),
    )


def _extend(children: st.SearchStrategy[Recipe]) -> st.SearchStrategy[Recipe]:
    queries = children.filter(lambda r: r.kind != "raw")
    return st.one_of(
        _sql_node(children),
        st.builds(
            lambda items, sep: Recipe("join", sep, tuple(items)),
            st.lists(queries, max_size=4),
            st.one_of(st.sampled_from(SEPARATORS), queries),
        ),
        st.builds(lambda a, b: Recipe("add", None, (a, b)), queries, queries),
    )


recipes = st.recursive(_leaf(), _extend, max_leaves=25).filter(lambda r: r.kind != "raw")


def build(sql: Any, recipe: Recipe) -> Any:
    """The recipe as an ``SQLQuery`` (or, for "raw", as a plain argument)."""
    kind, data, children = recipe.kind, recipe.data, recipe.children
    if kind == "raw":
        return data
    if kind == "value":
        return sql.value(data)
    if kind == "ident":
        return sql.ident(*data)
    if kind == "unsafe":
        return sql.unsafe(data)
    if kind == "add":
        return build(sql, children[0]) + build(sql, children[1])
    if kind == "join":
        sep = data if isinstance(data, str) else build(sql, data)
        return sql.join([build(sql, child) for child in children], sep)
    mode, order, literals = data
    args = [build(sql, child) for child in children]
    fields = {"auto": "{}", "manual": "{%d}", "named": "{a%d}"}[mode]
    template = _escape(literals[0])
    for index, literal in zip(order, literals[1:], strict=True):
        template += (fields % index if "%" in fields else fields) + _escape(literal)
    if mode == "named":
        return sql(template, **{f"a{i}": arg for i, arg in enumerate(args)})
    return sql(template, *args)


def model(recipe: Recipe) -> list[tuple[str, Any]]:
    """The reference: the recipe as ("text", str) and ("param", value) tokens."""
    kind, data, children = recipe.kind, recipe.data, recipe.children
    if kind in ("raw", "value"):
        return [("param", data)]
    if kind == "ident":
        return [("text", ".".join('"' + n.replace('"', '""') + '"' for n in data))]
    if kind == "unsafe":
        return [("text", data)]
    if kind == "add":
        return model(children[0]) + model(children[1])
    if kind == "join":
        sep = [("text", data)] if isinstance(data, str) else model(data)
        tokens: list[tuple[str, Any]] = []
        for index, child in enumerate(children):
            tokens += (sep if index else []) + model(child)
        return tokens
    _, order, literals = data
    tokens = [("text", literals[0])]
    for index, literal in zip(order, literals[1:], strict=True):
        tokens += [*model(children[index]), ("text", literal)]
    return tokens


WORD = frozenset(string.ascii_letters + string.digits + "_$")
Outcome = tuple[str, list[Any]] | str  # format()'s result, or the ValueError's message


def render(tokens: list[tuple[str, Any]]) -> Outcome:
    """The expected result, or the start of the error for a ``$n`` touching a word character."""
    text, params = "", []
    after_param = False
    for kind, item in tokens:
        if kind == "param":
            params.append(item)
            if text and (text[-1] in WORD or text[-1] >= "\x80"):
                return f"sql(): parameter ${len(params)} directly follows {text[-1]!r}"
            text += f"${len(params)}"
            after_param = True
        elif item:
            if after_param and (item[0] in WORD or item[0] >= "\x80"):
                return f"sql(): parameter ${len(params)} is directly followed by {item[0]!r}"
            text += item
            after_param = False
    return text, params


def outcome(query: Any) -> Outcome:
    try:
        result: tuple[str, list[Any]] = query.format()
    except ValueError as exc:
        return str(exc)
    return result


def check(result: Outcome, expected: Outcome) -> None:
    if isinstance(expected, str):
        assert isinstance(result, str)
        assert result.startswith(expected)
    else:
        assert result == expected
    assert MARK not in repr(result[0] if isinstance(result, tuple) else result)


@settings(max_examples=300, deadline=None)
@given(recipes)
def test_twins_agree_with_the_model(recipe: Recipe) -> None:
    expected = render(model(recipe))
    results = {impl: outcome(build(twin("_compose", impl).sql, recipe)) for impl in IMPLS}
    for impl, result in results.items():
        try:
            check(result, expected)
        except AssertionError:
            raise AssertionError(f"{impl}: {result!r} != {expected!r}") from None
    assert len(set(map(repr, results.values()))) == 1


@settings(max_examples=100, deadline=None)
@given(recipes, recipes)
def test_twins_agree_on_equality(first: Recipe, second: Recipe) -> None:
    expected = render(model(first)), render(model(second))
    for impl in IMPLS:
        sql = twin("_compose", impl).sql
        a, b = build(sql, first), build(sql, second)
        if isinstance(expected[0], str) or isinstance(expected[1], str):
            with pytest.raises(ValueError, match="sql\\(\\): parameter"):
                a == b  # noqa: B015
        else:
            assert (a == b) is (expected[0] == expected[1]), impl
        assert MARK not in repr(a), impl


class StrSubclass(str):
    def __str__(self) -> str:
        return "not the template"


template_pieces = st.sampled_from(
    [
        "{",
        "}",
        "{}",
        " {} ",
        " {b} ",
        "{0}",
        "{1}",
        "{a}",
        "{!r}",
        "{:x}",
        "{0.x}",
        "9",
        "x",
        " ",
        "$",
        "é",
        "{99999999999999999999}",
        f"{{{sys.maxsize}}}",
        f"{{{sys.maxsize - 1}}}",
    ]
)
templates = st.lists(
    st.one_of(template_pieces, template_pieces, st.text(max_size=3)), max_size=8
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=30), templates),
    st.booleans(),
    st.one_of(st.none(), st.lists(st.integers(), max_size=3)),
)
def test_twins_agree_on_any_template(
    template: str, subclass: bool, random_args: list[int] | None
) -> None:
    """Any string with the arguments it names (or random ones): the same query or error."""
    if random_args is None:  # the arguments the fields ask for, so that many succeed
        args = list(range(template.count("{}")))
        kwargs = {name: 0 for name in ("a", "b") if "{" + name + "}" in template}
    else:
        args, kwargs = random_args, {}
    outcomes = []
    for impl in IMPLS:
        sql = twin("_compose", impl).sql
        try:
            query = sql(StrSubclass(template) if subclass else template, *args, **kwargs)
            outcomes.append(("ok", query.format()))
        except (TypeError, ValueError) as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    if outcomes[0][0] == "ok" and not args and not kwargs:
        assert outcomes[0][1] == (template.replace("{{", "{").replace("}}", "}"), [])


class Sneaky(str):
    """Equal and hashed as its text, lying about it everywhere else."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: Any) -> str:
        return "x"

    def __contains__(self, item: object) -> bool:
        return False

    def __iter__(self) -> Any:
        return iter("x")

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"x"

    def replace(self, *args: Any, **kwargs: Any) -> str:
        return "x"

    def __str__(self) -> str:
        return "x"


class Disguised:
    """``sql`` with every text it is given (template, names, keywords, separators) a Sneaky."""

    def __init__(self, sql: Any) -> None:
        self.sql = sql

    def __call__(self, template: str, *args: Any, **kwargs: Any) -> Any:
        return self.sql(Sneaky(template), *args, **{Sneaky(k): v for k, v in kwargs.items()})

    def ident(self, *names: str) -> Any:
        return self.sql.ident(*map(Sneaky, names))

    def value(self, value: Any) -> Any:
        return self.sql.value(value)

    def unsafe(self, text: str) -> Any:
        return self.sql.unsafe(Sneaky(text))

    def join(self, queries: Any, separator: Any) -> Any:
        return self.sql.join(queries, Sneaky(separator) if type(separator) is str else separator)


@settings(max_examples=200, deadline=None)
@given(recipes)
def test_str_subclasses_count_as_their_value(recipe: Recipe) -> None:
    """A str subclass's methods never shape the SQL: it is read as its str value."""
    expected = render(model(recipe))
    for impl in IMPLS:
        sql = twin("_compose", impl).sql
        assert repr(outcome(build(Disguised(sql), recipe))) == repr(outcome(build(sql, recipe)))
        if not isinstance(expected, str):
            assert outcome(build(Disguised(sql), recipe)) == expected, impl
