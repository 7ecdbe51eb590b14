"""``pgfast.sql`` (docs/sql.md): one suite, run over the compiled and the pure twin."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from conftest import twin

import pgfast._impl
import pgfast._sql

nodb = pytest.mark.nodb


@pytest.fixture
def mod(impl: str) -> ModuleType:
    return twin("_compose", impl)


@pytest.fixture
def sql(mod: ModuleType) -> Any:
    return mod.sql


@nodb
class TestTemplates:
    def test_api_example(self, sql: Any) -> None:
        q = sql("SELECT * FROM users WHERE id = {} AND org = {org}", 10, org="acme")
        assert q.format() == ("SELECT * FROM users WHERE id = $1 AND org = $2", [10, "acme"])

    def test_manual_numbering_follows_the_text(self, sql: Any) -> None:
        q = sql("a = {1} AND b = {0}", "zero", "one")
        assert q.format() == ("a = $1 AND b = $2", ["one", "zero"])

    def test_a_value_used_twice_is_two_params(self, sql: Any) -> None:
        assert sql("{0} + {0} + {x} + {x}", 7, x=8).format() == (
            "$1 + $2 + $3 + $4",
            [7, 7, 8, 8],
        )

    def test_literal_braces(self, sql: Any) -> None:
        q = sql("SELECT '{{}}', '{{a}}' || {}, '}}{{'", 1)
        assert q.format() == ("SELECT '{}', '{a}' || $1, '}{'", [1])

    def test_no_fields(self, sql: Any) -> None:
        assert sql("SELECT 1").format() == ("SELECT 1", [])
        assert sql("").format() == ("", [])

    def test_text_is_verbatim(self, sql: Any) -> None:
        template = "\n    SELECT *\n\tFROM t  \n  WHERE a = {}   \n\n"
        assert sql(template, 1).format()[0] == "\n    SELECT *\n\tFROM t  \n  WHERE a = $1   \n\n"

    def test_text_of_every_character_width(self, sql: Any) -> None:
        q = sql("😀 {} a {} é {} € {}", 1, sql.unsafe("ü"), sql.ident("表"), sql("{}", 2))
        assert q.format() == ('😀 $1 a ü é "表" € $2', [1, 2])
        assert sql("a {} é", sql.unsafe("€")).format() == ("a € é", [])

    def test_values_never_enter_the_text(self, sql: Any) -> None:
        evil = "'; DROP TABLE users; -- $1 {} {{"
        text, params = sql("SELECT {} AS {name}", evil, name=evil).format()
        assert text == "SELECT $1 AS $2"
        assert params == [evil, evil]

    def test_any_value_is_one_param(self, sql: Any) -> None:
        values = [None, 1.5, [1, 2], {"a": 1}, b"x", ("t",)]
        q = sql(", ".join(["{}"] * len(values)), *values)
        assert q.format() == (", ".join(f"${n}" for n in range(1, 7)), values)

    def test_same_template_again_uses_the_cache_correctly(self, sql: Any) -> None:
        template = "".join(["x = {}"])  # a distinct str object, equal to a cached one
        assert sql("x = {}", 1).format() == ("x = $1", [1])
        assert sql(template, 2).format() == ("x = $1", [2])

    def test_more_templates_than_the_cache_holds(self, mod: ModuleType, sql: Any) -> None:
        for n in range(mod.CACHE_SIZE + 50):
            assert sql(f"SELECT {n} + {{}}", n).format() == (f"SELECT {n} + $1", [n])
        assert sql("SELECT 0 + {}", 0).format() == ("SELECT 0 + $1", [0])


@nodb
class TestTemplateErrors:
    @pytest.mark.parametrize(
        ("template", "field"), [("{} {0}", "{0}"), ("{0} {}", "{}"), ("{a} {} {1}", "{1}")]
    )
    def test_mixing_auto_and_manual_numbering(self, sql: Any, template: str, field: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"field {field}: cannot mix automatic")):
            sql(template, 1, 2, a=3)

    def test_missing_positional(self, sql: Any) -> None:
        with pytest.raises(TypeError, match=r"missing argument for field \{\} \(#2\)"):
            sql("{} {}", 1)
        with pytest.raises(TypeError, match=r"missing argument for field \{2\}"):
            sql("{0} {2} {1}", 1, 2)

    def test_missing_keyword(self, sql: Any) -> None:
        with pytest.raises(TypeError, match=r"missing keyword argument 'org' for field \{org\}"):
            sql("{id} {org}", id=1)
        with pytest.raises(TypeError, match=r"missing keyword argument 'org'"):
            sql("{id} {org}", id=1, other=2)

    def test_unused_positional(self, sql: Any) -> None:
        with pytest.raises(TypeError, match="positional argument 2 is not used"):
            sql("{} {}", 1, 2, 3)
        with pytest.raises(TypeError, match="positional argument 1 is not used"):
            sql("{0} {2}", 1, 2, 3)
        with pytest.raises(TypeError, match="positional argument 0 is not used"):
            sql("SELECT {x}", 1, x=2)

    def test_unused_keyword(self, sql: Any) -> None:
        with pytest.raises(TypeError, match="keyword argument 'extra' is not used"):
            sql("{a}", a=1, extra=2)
        with pytest.raises(TypeError, match="keyword argument 'extra' is not used"):
            sql("{}", 1, extra=2)

    @pytest.mark.parametrize(
        ("template", "field"),
        [("{x!r}", "{x!r}"), ("{!s}", "{!s}"), ("{0!a}", "{0!a}")],
    )
    def test_conversion(self, sql: Any, template: str, field: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"field {field} has a conversion")):
            sql(template, 1) if "x" not in template else sql(template, x=1)

    @pytest.mark.parametrize(("template", "field"), [("{x:>3}", "{x:>3}"), ("{:d}", "{:d}")])
    def test_format_spec(self, sql: Any, template: str, field: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"field {field} has a format spec")):
            sql(template, 1) if "x" not in template else sql(template, x=1)

    @pytest.mark.parametrize("field", ["a.b", "a[0]", "0.real", " a", "1a"])
    def test_lookups_and_odd_names(self, sql: Any, field: str) -> None:
        with pytest.raises(ValueError, match="is not a name or a number") as info:
            sql("SELECT {" + field + "}")
        assert "{" + field + "}" in str(info.value)

    @pytest.mark.parametrize("template", ["SELECT {", "SELECT }", "{x", "{x!}"])
    def test_malformed(self, sql: Any, template: str) -> None:
        with pytest.raises(ValueError, match="invalid template") as info:
            sql(template)
        assert repr(template) in str(info.value)

    @pytest.mark.parametrize("template", [b"SELECT 1", None, 1, ["SELECT"]])
    def test_template_must_be_str(self, sql: Any, template: object) -> None:
        with pytest.raises(TypeError, match="template must be a str"):
            sql(template)

    def test_a_query_is_not_a_template(self, sql: Any) -> None:
        with pytest.raises(TypeError, match="not 'SQLQuery'"):
            sql(sql("SELECT 1"))

    def test_huge_field_index(self, sql: Any) -> None:
        with pytest.raises(ValueError, match=r"field \{99999999999999999999\}: index too large"):
            sql("{99999999999999999999}")
        with pytest.raises(ValueError, match=f"field \\{{{sys.maxsize}\\}}: index too large"):
            sql(f"{{{sys.maxsize}}}", 1)
        largest = sys.maxsize - 1
        with pytest.raises(TypeError, match=f"takes {sys.maxsize} positional argument"):
            sql(f"{{{largest}}}", 1)


class Template(str):
    """A str subclass whose own methods must not change the SQL."""

    def __str__(self) -> str:
        return "DROP TABLE users"

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return True


@nodb
class TestStrSubclasses:
    def test_template(self, sql: Any) -> None:
        text, params = sql(Template("a = {} AND b = {b}"), 1, b=2).format()
        assert (text, params) == ("a = $1 AND b = $2", [1, 2])
        assert type(text) is str
        assert sql(Template("SELECT 1")).format() == ("SELECT 1", [])
        assert sql(Template("SELECT {}"), 3).format() == ("SELECT $1", [3])

    def test_unsafe(self, sql: Any) -> None:
        text = sql.unsafe(Template("SELECT 2")).format()[0]
        assert text == "SELECT 2"
        assert type(text) is str


@nodb
class TestNesting:
    def test_numbering_across_nesting(self, sql: Any) -> None:
        inner = sql("b = {} AND c = {}", 2, 3)
        middle = sql("a = {} AND ({inner}) AND d = {d}", 1, inner=inner, d=4)
        outer = sql("SELECT {} WHERE {} AND e = {}", 0, middle, 5)
        assert outer.format() == (
            "SELECT $1 WHERE a = $2 AND (b = $3 AND c = $4) AND d = $5 AND e = $6",
            [0, 1, 2, 3, 4, 5],
        )
        assert inner.format() == ("b = $1 AND c = $2", [2, 3])

    def test_a_fragment_used_twice_is_spliced_twice(self, sql: Any) -> None:
        f = sql("x = {}", 1)
        assert sql("{0} OR {0}", f).format() == ("x = $1 OR x = $2", [1, 1])
        assert sql("{} OR {}", f, f).format() == ("x = $1 OR x = $2", [1, 1])

    def test_spliced_text_is_not_parsed_again(self, sql: Any) -> None:
        raw = sql.unsafe("'{}' || '$1' || '{0}'")
        assert sql("SELECT {}, {}", raw, 9).format() == ("SELECT '{}' || '$1' || '{0}', $1", [9])

    def test_deep_trees_do_not_recurse(self, sql: Any) -> None:
        q = sql.unsafe("SELECT 0")
        for n in range(1, 20001):
            q = q + sql(" + {}", n) if n % 2 else sql("{} + {}", q, n)
        text, params = q.format()
        assert params == list(range(1, 20001))
        assert text.endswith(" + $19999 + $20000")
        del q  # freeing a deep tree must not overflow the C stack either

    def test_many_params(self, sql: Any) -> None:
        q = sql.join([sql.value(n) for n in range(70000)])
        text, params = q.format()
        assert params == list(range(70000))
        assert text.split(", ")[-3:] == ["$69998", "$69999", "$70000"]


@nodb
class TestParameterNextToText:
    """A ``$n`` that would run into the text around it is an error, never other SQL."""

    @pytest.mark.parametrize(
        ("template", "n", "char"),
        [
            ("SELECT {}0", 1, "0"),  # would be $10, another parameter
            ("SELECT {} + {}9", 2, "9"),
            ("{}a", 1, "a"),
            ("{}Z", 1, "Z"),
            ("{}_x", 1, "_"),
            ("{}$", 1, "$"),
            ("{}é", 1, "é"),
            ("{}表", 1, "表"),
        ],
    )
    def test_followed_by_a_word_character(self, sql: Any, template: str, n: int, char: str) -> None:
        q = sql(template, *range(template.count("{}")))
        with pytest.raises(
            ValueError, match=re.escape(f"parameter ${n} is directly followed by {char!r}")
        ) as info:
            q.format()
        assert "put a space or a cast" in str(info.value)

    @pytest.mark.parametrize(
        ("template", "n", "char"),
        [
            ("x{}", 1, "x"),  # would be x$1, an identifier
            ("SELECT a_{}", 1, "_"),
            ("a1{}", 1, "1"),
            ("$${}", 1, "$"),
            ("é{}", 1, "é"),
            ("{}{}", 2, "1"),  # $1$2
        ],
    )
    def test_after_a_word_character(self, sql: Any, template: str, n: int, char: str) -> None:
        q = sql(template, *range(template.count("{}")))
        with pytest.raises(
            ValueError, match=re.escape(f"parameter ${n} directly follows {char!r}")
        ) as info:
            q.format()
        assert "put a space" in str(info.value)

    @pytest.mark.parametrize(
        ("build", "message"),
        [
            (lambda sql: sql("{}", 1) + sql.unsafe("0"), "$1 is directly followed by '0'"),
            (lambda sql: sql.unsafe("x") + sql.value(1), "$1 directly follows 'x'"),
            (
                lambda sql: sql("{}", 1) + sql.unsafe("") + sql("a"),
                "$1 is directly followed by 'a'",
            ),
            (lambda sql: sql("{}{}0", 1, sql.unsafe("")), "$1 is directly followed by '0'"),
            (
                lambda sql: sql.join([sql.value(1), sql.unsafe("a")], ""),
                "$1 is directly followed by 'a'",
            ),
            (
                lambda sql: sql.join([sql.unsafe("a"), sql.value(1)], ""),
                "$1 directly follows 'a'",
            ),
            (
                lambda sql: sql.join([sql.value(1), sql.value(2)], ""),
                "$2 directly follows '1'",
            ),
            (
                lambda sql: sql.join([sql.value(1), sql.value(2)], sql.unsafe("OR")),
                "$1 is directly followed by 'O'",
            ),
            (
                lambda sql: sql.join([sql.ident("t"), sql.value(1)], sql.unsafe(" x")),
                "$1 directly follows 'x'",
            ),
        ],
    )
    def test_through_splicing_add_and_join(self, sql: Any, build: Any, message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(f"sql(): parameter {message}")):
            build(sql).format()

    @pytest.mark.parametrize(
        ("template", "text"),
        [
            ("SELECT {}::int", "SELECT $1::int"),
            ("SELECT {} 0", "SELECT $1 0"),
            ("f({},{})", "f($1,$2)"),
            ("a={}+-{}", "a=$1+-$2"),
            ('"t"{}', '"t"$1'),
            ("{}\n", "$1\n"),
            ("x.{}", "x.$1"),
            ("{}.", "$1."),
        ],
    )
    def test_punctuation_and_spaces_are_fine(self, sql: Any, template: str, text: str) -> None:
        n = template.count("{}")
        assert sql(template, *range(n)).format() == (text, list(range(n)))

    def test_repr_and_equality_of_an_ambiguous_query(self, sql: Any) -> None:
        q = sql("SELECT {}0", "secret")
        assert repr(q).startswith(
            "<SQLQuery that cannot be formatted: sql(): parameter $1 is directly followed by '0'"
        )
        assert "secret" not in repr(q)
        with pytest.raises(ValueError, match="directly followed by"):
            q == sql("SELECT 1")  # noqa: B015
        with pytest.raises(ValueError, match="directly followed by"):
            hash(q)


@nodb
class TestHelpers:
    @pytest.mark.parametrize(
        ("names", "text"),
        [
            (("users",), '"users"'),
            (("public", "users"), '"public"."users"'),
            (('we"ird', "Mixed Case"), '"we""ird"."Mixed Case"'),
            (("a", "b", "c"), '"a"."b"."c"'),
            (("é" * 31 + "a",), '"' + "é" * 31 + 'a"'),
        ],
    )
    def test_ident(self, sql: Any, names: tuple[str, ...], text: str) -> None:
        assert sql.ident(*names).format() == (text, [])
        assert sql("SELECT * FROM {}", sql.ident(*names)).format() == (f"SELECT * FROM {text}", [])

    @pytest.mark.parametrize(
        ("names", "error", "message"),
        [
            ((), TypeError, "at least one name"),
            (("",), ValueError, "empty identifier"),
            (("a", ""), ValueError, "empty identifier"),
            (("a\x00b",), ValueError, "contains a NUL character"),
            (("x" * 64,), ValueError, "longer than 63 bytes"),
            (("é" * 32,), ValueError, "longer than 63 bytes"),
            ((1,), TypeError, "names must be str, not 'int'"),
            ((["a"],), TypeError, "names must be str, not 'list'"),
        ],
    )
    def test_bad_ident(
        self, sql: Any, names: tuple[Any, ...], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            sql.ident(*names)

    def test_ident_of_63_bytes(self, sql: Any) -> None:
        assert sql.ident("x" * 63).format()[0] == '"' + "x" * 63 + '"'

    def test_value(self, sql: Any) -> None:
        assert sql.value([1, 2]).format() == ("$1", [[1, 2]])
        assert sql("a = {}", sql.value(5)).format() == ("a = $1", [5])
        with pytest.raises(TypeError, match="got an SQLQuery"):
            sql.value(sql("SELECT 1"))

    def test_unsafe(self, sql: Any) -> None:
        assert sql.unsafe("SELECT '{}' -- $1").format() == ("SELECT '{}' -- $1", [])
        assert sql.unsafe("").format() == ("", [])
        with pytest.raises(TypeError, match="takes a str, not 'bytes'"):
            sql.unsafe(b"SELECT 1")

    def test_file(self, sql: Any, tmp_path: Path) -> None:
        path = tmp_path / "q.sql"
        text = "-- café {x} $1\nSELECT 'ü'\n"
        path.write_bytes(text.encode("utf-8"))
        assert sql.file(path).format() == (text, [])
        assert sql.file(str(path)) == sql.unsafe(text)
        with pytest.raises(FileNotFoundError):
            sql.file(tmp_path / "missing.sql")

    def test_file_is_verbatim(self, sql: Any, tmp_path: Path) -> None:
        path = tmp_path / "crlf.sql"
        path.write_bytes(b"SELECT 'a\r\nb'\r\n\rx\r")
        assert sql.file(path).format() == ("SELECT 'a\r\nb'\r\n\rx\r", [])

    def test_file_drops_a_leading_byte_order_mark(self, sql: Any, tmp_path: Path) -> None:
        path = tmp_path / "bom.sql"
        path.write_bytes("\ufeffSELECT 1 -- \ufeff".encode())
        assert sql.file(path).format() == ("SELECT 1 -- \ufeff", [])

    def test_file_not_utf8(self, sql: Any, tmp_path: Path) -> None:
        path = tmp_path / "latin1.sql"
        path.write_bytes("SELECT 'café'".encode("latin-1"))
        with pytest.raises(ValueError, match="is not valid UTF-8") as info:
            sql.file(path)
        assert repr(str(path)) in str(info.value)
        assert "(invalid continuation byte at byte offset 11)" in str(info.value)
        path.write_bytes(b"\xef\xbb\xbfSELECT \xff")
        with pytest.raises(
            ValueError, match=r"is not valid UTF-8 \(invalid start byte at byte offset 10\)"
        ):
            sql.file(path)

    def test_join_default_separator(self, sql: Any) -> None:
        q = sql.join(sql("({}, {})", n, str(n)) for n in range(3))
        assert q.format() == ("($1, $2), ($3, $4), ($5, $6)", [0, "0", 1, "1", 2, "2"])

    @pytest.mark.parametrize(
        "sep", ["", ",", ", ", " AND ", " OR ", ") AND (", ") OR (", ";", "\n"]
    )
    def test_join_allowed_separators(self, sql: Any, sep: str) -> None:
        q = sql.join([sql("a = {}", 1), sql.unsafe("(b)"), sql("c = {}", 2)], sep)
        assert q.format() == (f"a = $1{sep}(b){sep}c = $2", [1, 2])

    def test_join_query_separator(self, sql: Any) -> None:
        q = sql.join([sql("{}", "a"), sql("{}", "b"), sql("{}", "c")], sql(" || {} || ", "-"))
        assert q.format() == ("$1 || $2 || $3 || $4 || $5", ["a", "-", "b", "-", "c"])

    def test_join_edge_cases(self, sql: Any) -> None:
        assert sql.join([]).format() == ("", [])
        assert sql.join([], sql(" {} ", 1)).format() == ("", [])
        assert sql.join([sql("x = {}", 1)]).format() == ("x = $1", [1])

    @pytest.mark.parametrize("sep", [" AND", " ; DROP TABLE x; ", "and", None, 1])
    def test_join_bad_separator(self, sql: Any, sep: object) -> None:
        with pytest.raises(ValueError, match=re.escape(f"separator {sep!r} is not allowed")):
            sql.join([sql("a")], sep)

    def test_join_bad_item(self, sql: Any) -> None:
        with pytest.raises(TypeError, match="item 1 is a 'str', not an SQLQuery"):
            sql.join([sql("a"), "b"])


@nodb
class TestSQLQuery:
    def test_add(self, sql: Any) -> None:
        q = sql("SELECT {}", 1) + sql(" WHERE a = {}", 2) + sql.unsafe(" LIMIT 1")
        assert q.format() == ("SELECT $1 WHERE a = $2 LIMIT 1", [1, 2])

    @pytest.mark.parametrize("other", ["WHERE 1", 1, None, b"x"])
    def test_add_non_query(self, sql: Any, other: object) -> None:
        q = sql("SELECT 1")
        with pytest.raises(TypeError, match="can only concatenate SQLQuery"):
            q + other
        with pytest.raises(TypeError, match="can only concatenate SQLQuery"):
            other + q

    def test_format_returns_a_fresh_list(self, sql: Any) -> None:
        q = sql("a = {}", 1)
        q.format()[1].append(2)
        assert q.format() == ("a = $1", [1])

    def test_immutable(self, mod: ModuleType, sql: Any) -> None:
        q = sql("a = {}", 1)
        with pytest.raises(AttributeError, match="immutable"):
            q._text = "DROP TABLE x"
        with pytest.raises(AttributeError, match="immutable"):
            q.extra = 1
        with pytest.raises(AttributeError, match="immutable"):
            del q._values
        with pytest.raises(TypeError, match=r"built with pgfast\.sql"):
            mod.SQLQuery("a", [])
        with pytest.raises(TypeError):
            type("Sub", (mod.SQLQuery,), {})
        assert q.format() == ("a = $1", [1])

    def test_equality_and_hash(self, sql: Any) -> None:
        a = sql("x = {} AND {}", 1, sql.ident("t"))
        b = sql("x = {v} AND {t}", v=1, t=sql.unsafe('"t"'))
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1
        assert a != sql("x = {} AND {}", 2, sql.ident("t"))
        assert a != sql("x = {} AND {}", 1, sql.ident("u"))
        assert sql("a") != "a"
        assert sql("1") != 1

    def test_repr_shows_text_and_param_count_not_values(self, sql: Any) -> None:
        q = sql("SELECT * FROM t WHERE pw = {} AND u = {}", "hunter2-secret", "bob")
        assert repr(q) == "<SQLQuery 'SELECT * FROM t WHERE pw = $1 AND u = $2' (2 params)>"
        assert repr(sql("a = {}", "secret")) == "<SQLQuery 'a = $1' (1 param)>"
        assert repr(sql("SELECT 1")) == "<SQLQuery 'SELECT 1' (0 params)>"

    def test_format_from_many_threads(self, sql: Any) -> None:
        # Four threads format the same fresh queries at once, switching as often
        # as the interpreter allows: none may see a half-cached result.
        queries = [sql("SELECT {} + {}", n, sql("-{}", n)) for n in range(2000)]
        expected = [(("SELECT $1 + -$2", [n, n]), hash("SELECT $1 + -$2")) for n in range(2000)]
        barrier = threading.Barrier(4)

        def work(_: int) -> list[tuple[tuple[str, list[Any]], int]]:
            barrier.wait()
            return [(q.format(), hash(q)) for q in queries]

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            with ThreadPoolExecutor(4) as pool:
                outcomes = list(pool.map(work, range(4)))
        finally:
            sys.setswitchinterval(interval)
        assert outcomes == [expected] * 4

    def test_is_sql_query(self, mod: ModuleType, sql: Any) -> None:
        assert mod.is_sql_query(sql("SELECT 1"))
        assert mod.is_sql_query(sql.ident("a"))
        for other in ["SELECT 1", None, 1, object()]:
            assert not mod.is_sql_query(other)

    def test_pickle_and_copy(self, mod: ModuleType, sql: Any) -> None:
        q = sql("SELECT {} FROM {}", [1, 2], sql.ident("t"))
        for restored in (pickle.loads(pickle.dumps(q)), copy.copy(q), copy.deepcopy(q)):
            assert type(restored) is mod.SQLQuery
            assert restored == q

    def test_unpickling_checks_the_shape(self, mod: ModuleType, sql: Any) -> None:
        restore, _ = sql("x").__reduce__()
        with pytest.raises(ValueError, match="not a pickled SQLQuery"):
            restore(("a",), (1,))
        with pytest.raises(ValueError, match="not a pickled SQLQuery"):
            restore((1, 2), (3,))
        with pytest.raises(TypeError):
            restore(["a"], [])


class _Lying(str):
    """A str subclass whose methods all lie about its text."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0  # hash("") is 0 too

    def __len__(self) -> int:
        return 1

    def __contains__(self, item: object) -> bool:
        return False

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"x"

    def replace(self, *args: Any, **kwargs: Any) -> str:
        return "replaced"

    def __str__(self) -> str:
        return "lie"


class _Raising(str):
    """A str subclass whose comparisons and text methods raise."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ called")

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("encode called")

    def replace(self, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError("replace called")


class _Plain(str):
    pass


@nodb
class TestStrSubclassesByValue:
    """A str subclass counts as its str value: its own methods never shape the SQL."""

    @pytest.mark.parametrize("kind", [_Plain, _Lying, _Raising])
    def test_ident(self, sql: Any, kind: type[str]) -> None:
        assert sql.ident(kind('a"b'), kind("t")).format() == ('"a""b"."t"', [])
        with pytest.raises(ValueError, match="longer than 63 bytes"):
            sql.ident(kind("x" * 64))
        with pytest.raises(ValueError, match="NUL character"):
            sql.ident(kind("a\x00"))

    def test_ident_cache_is_not_fooled_by_a_lying_name(self, sql: Any) -> None:
        class Posing(str):
            def __eq__(self, other: object) -> bool:
                return True

            def __hash__(self) -> int:
                return hash(("b",)[0])

        assert sql.ident(Posing("a")).format()[0] == '"a"'
        assert sql.ident("b").format()[0] == '"b"'

    def test_ident_with_a_lone_surrogate_is_a_clear_error(self, sql: Any) -> None:
        with pytest.raises(ValueError, match="lone surrogate"):
            sql.ident("a\ud800")

    @pytest.mark.parametrize("kind", [_Plain, _Lying, _Raising])
    def test_join_separator(self, sql: Any, kind: type[str]) -> None:
        parts = [sql("a"), sql("b")]
        assert sql.join(parts, kind(" AND ")).format() == ("a AND b", [])
        # Posing as an allowed separator (equal to all, hashing like "") gets nowhere.
        with pytest.raises(ValueError, match="is not allowed"):
            sql.join(parts, kind("; DROP TABLE t; --"))

    @pytest.mark.parametrize("kind", [_Plain, _Lying, _Raising])
    def test_keyword_names(self, mod: ModuleType, kind: type[str]) -> None:
        assert mod.compose("{x} {y}", (), {kind("x"): 1, "y": 2}).format() == ("$1 $2", [1, 2])
        assert mod.sql("{x}", **{_Plain("x"): 1}).format() == ("$1", [1])
        with pytest.raises(TypeError, match=r"keyword argument 'z' is not used"):
            mod.compose("{x}", (), {kind("x"): 1, "z": 2})

    def test_keyword_name_given_twice(self, mod: ModuleType) -> None:
        class Apart(str):
            __eq__ = str.__eq__

            def __hash__(self) -> int:
                return 7

        with pytest.raises(TypeError, match="'x' is given twice"):
            mod.compose("{x}", (), {"x": 1, Apart("x"): 2})

    def test_compose_takes_a_tuple_and_a_dict(self, mod: ModuleType) -> None:
        with pytest.raises(TypeError, match="args must be a tuple, not 'list'"):
            mod.compose("{}", [1], {})
        with pytest.raises(TypeError, match="kwargs must be a dict, not 'NoneType'"):
            mod.compose("x", (), None)
        with pytest.raises(TypeError, match="keyword argument names must be str, not 'int'"):
            mod.compose("x", (), {1: 2})

    @pytest.mark.parametrize("kind", [_Plain, _Lying, _Raising])
    def test_template_and_unsafe_text(self, sql: Any, kind: type[str]) -> None:
        assert sql(kind("a = {}"), 1).format() == ("a = $1", [1])
        assert sql.unsafe(kind("now()")).format() == ("now()", [])

    def test_a_claimed_class_is_not_a_str(self, sql: Any) -> None:
        class Claims:
            __class__ = str  # type: ignore[assignment]

        with pytest.raises(TypeError, match="names must be str"):
            sql.ident(Claims())
        with pytest.raises(TypeError, match="takes a str"):
            sql.unsafe(Claims())


@nodb
def test_a_query_made_by_new_is_the_empty_query(mod: ModuleType, sql: Any) -> None:
    # It never crashes the compiled twin: run where a crash cannot take pytest down.
    script = (
        f"import pickle; from {mod.__name__} import SQLQuery, sql; "
        "q = SQLQuery.__new__(SQLQuery); "
        "print(q.format(), (sql('a {} b', q) + q).format(), "
        "pickle.loads(pickle.dumps(q)) == sql(''))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "('', []) ('a  b', []) True"


@nodb
@pytest.mark.skipif(sys.version_info < (3, 14), reason="t-strings need Python 3.14")
class TestTStrings:
    def test_t_string(self, sql: Any) -> None:
        org, inner = "acme", sql("b = {}", 2)
        q = sql(eval('t"SELECT {org} WHERE {inner} AND {{x}}"'))  # no 3.14 syntax in the file
        assert q.format() == ("SELECT $1 WHERE b = $2 AND {x}", ["acme", 2])
        assert org and inner

    def test_t_string_conversion_and_extra_args(self, sql: Any) -> None:
        x = 1
        with pytest.raises(ValueError, match=r"field \{x\} has a conversion or format spec"):
            sql(eval('t"{x!r}"'))
        with pytest.raises(TypeError, match="takes no other arguments"):
            sql(eval('t"{x}"'), 1)
        assert x


@nodb
def test_public_sql_is_the_chosen_implementation() -> None:
    assert pgfast._sql.sql is pgfast._impl.compose.sql
    assert pgfast._sql.SQLQuery is pgfast._impl.compose.SQLQuery
    assert pgfast._sql.is_sql_query is pgfast._impl.compose.is_sql_query
    assert pgfast._sql.sql("{}", 1).format() == ("$1", [1])


def test_formatted_query_runs_on_a_real_server(pg_url: str, impl: str) -> None:
    sql = twin("_compose", impl).sql
    q = sql(
        "SELECT {a}::int + {b}::int AS total, {s}::text AS s, {t} AS t FROM (VALUES (1)) AS {tab}",
        a=40,
        b=2,
        s="it's {x} $1",
        t=sql("upper({})", "abc"),
        tab=sql.ident("My Table"),
    )
    text, params = q.format()
    with psycopg.connect(pg_url) as conn, psycopg.RawCursor(conn) as cur:
        cur.execute(text, params)
        assert cur.fetchall() == [(42, "it's {x} $1", "ABC")]
        assert [c.name for c in cur.description or []] == ["total", "s", "t"]
