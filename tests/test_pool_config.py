"""Options, connection strings, redaction and code frames: no server needed."""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

import pgfast
import pgfast.abc
from pgfast._config import (
    KEEPALIVE_DEFAULTS,
    OPTION_NAMES,
    PASSWORD_HISTORY,
    REDACTED,
    AsyncPoolOptions,
    PoolConfig,
    PoolOptions,
    ResolvedOptions,
    parse_keyword_value,
    resolve_config,
    session_settings,
    split_string_options,
)
from pgfast._error_text import REDACTED_VALUE, code_frame, redact_params
from pgfast._exceptions import ConfigurationError
from pgfast._factories import create_async_pool, create_pool
from pgfast._pool_common import IsolationLevel, begin_statement

pytestmark = pytest.mark.nodb

URL = "postgresql://app:s3cr%21t-pw@db.example:5433/appdb"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name == "DATABASE_URL" or name.startswith("PG"):
            monkeypatch.delenv(name)


def test_database_url_and_libpq_variables(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_pool()
    message = str(info.value)
    assert "DATABASE_URL" in message and 'create_pool("postgresql://' in message
    with pytest.raises(ConfigurationError):
        create_async_pool()
    monkeypatch.setenv("PGHOST", "somewhere")
    assert resolve_config(None, {}).conninfo == ""
    monkeypatch.setenv("DATABASE_URL", URL)
    assert resolve_config(None, {}).conninfo == URL
    assert resolve_config("host=x dbname=y", {}).conninfo == "host=x dbname=y"


def test_unknown_and_invalid_options() -> None:
    with pytest.raises(TypeError, match="'pool_sise'"):
        create_pool(URL, pool_sise=3)
    with pytest.raises(TypeError, match="'bogus'"):
        create_async_pool(URL, bogus=1)
    bad: list[dict[str, object]] = [
        {"pool_size": 0},
        {"pool_size": True},
        {"min_size": 5, "pool_size": 2},
        {"queue_timeout": -1},
        {"idle_timeout": "30"},
        {"max_uses": 0},
        {"row_type": "namedtuple"},
        {"prepare_threshold": -1},
        {"prepare_threshold": "5"},
        {"prepare_threshold": True},
        {"prepare_threshold": 2.0},
        {"query_timeout": 0},
        {"query_timeout": -1.5},
        {"query_timeout": math.inf},
        {"query_timeout": math.nan},
        {"query_timeout": "1"},
    ]
    for options in bad:
        with pytest.raises(ValueError, match=next(iter(options))):
            resolve_config(URL, options)
    wrong_types: list[dict[str, object]] = [
        {"schema": 3},
        {"password": 42},
        {"on_error": "log"},
        {"configure": "SET x = 1"},
        {"pipeline": 1},
        {"pipeline": None},
    ]
    for options in wrong_types:
        with pytest.raises(TypeError, match=next(iter(options))):
            resolve_config(URL, options)

    async def configure(conn: object) -> None:
        pass

    good = resolve_config(
        URL,
        {"prepare_threshold": 0, "query_timeout": 0.25, "configure": configure, "pipeline": False},
    ).options
    assert (good.prepare_threshold, good.query_timeout, good.pipeline) == (0, 0.25, False)
    assert good.configure is configure
    assert resolve_config(URL, {"prepare_threshold": None}).options.prepare_threshold is None
    with pytest.raises(TypeError, match="connection string must be a str"):
        create_pool(b"postgresql://x")  # type: ignore[arg-type]


def test_defaults_match_the_documented_ones() -> None:
    # The options table of docs/connecting.md.
    opts = resolve_config(URL, {}).options
    assert opts == ResolvedOptions()
    assert (opts.pool_size, opts.min_size, opts.queue_timeout, opts.connect_timeout) == (
        10,
        0,
        60.0,
        10.0,
    )
    assert (opts.idle_timeout, opts.max_lifetime, opts.max_uses, opts.row_type) == (
        30.0,
        3600.0,
        None,
        "dict",
    )
    assert (opts.prepare_threshold, opts.query_timeout, opts.configure, opts.pipeline) == (
        5,
        None,
        None,
        True,
    )


def test_session_settings_travel_in_libpq_options() -> None:
    config = resolve_config(
        URL + "?options=-c%20work_mem%3D8MB",
        {"schema": ['my "odd" schema', "public"], "statement_timeout": 1.5, "lock_timeout": 2},
    )
    assert session_settings(config.options) == {
        "search_path": '"my ""odd"" schema","public"',
        "statement_timeout": "1500",
        "lock_timeout": "2000",
    }
    assert config.connect_kwargs["options"] == (
        "-c work_mem=8MB "
        '-c search_path="my\\ ""odd""\\ schema","public" '
        "-c statement_timeout=1500 -c lock_timeout=2000"
    )
    assert config.connect_kwargs["autocommit"] is True


def test_passwords_are_redacted() -> None:
    pool = create_pool(URL)
    assert "s3cr" not in repr(pool) and "password" not in repr(pool)
    assert "db.example" in repr(pool)
    config = resolve_config(URL, {})
    assert config.redact("auth failed for s3cr!t-pw and s3cr%21t-pw") == (
        f"auth failed for {REDACTED} and {REDACTED}"
    )
    with pytest.raises(ConfigurationError) as info:
        create_pool("postgresql://app:hunter22@db/x?hunter22=1")
    assert "hunter22" not in str(info.value) and "invalid connection string" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        create_pool("host=db password=hunter22 port")
    assert "hunter22" not in str(info.value)


def connection_kwargs(config: PoolConfig) -> dict[str, Any]:
    """What a sync pool passes to psycopg for one new connection."""
    password = config.options.password
    return config.kwargs_with_password(password()) if callable(password) else config.connect_kwargs


def test_password_callable_result_is_redacted() -> None:
    config = resolve_config(URL, {"password": lambda: "rotating-token-1"})
    assert connection_kwargs(config)["password"] == "rotating-token-1"
    assert "rotating-token-1" not in config.redact("token rotating-token-1 rejected")
    bad = resolve_config(URL, {"password": lambda: 5})
    with pytest.raises(ConfigurationError, match="must return a str"):
        connection_kwargs(bad)


def test_begin_statement() -> None:
    assert begin_statement({}) == "BEGIN"
    assert begin_statement(
        {
            "isolation_level": IsolationLevel.SERIALIZABLE,
            "read_only": True,
            "deferrable": True,
            "statement_timeout": 0.25,
            "idle_in_transaction_session_timeout": 10,
        }
    ) == (
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; "
        "SET LOCAL statement_timeout = 250; "
        "SET LOCAL idle_in_transaction_session_timeout = 10000"
    )
    assert begin_statement(
        {"isolation_level": "Read_Committed", "read_only": False, "deferrable": False}
    ) == ("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE NOT DEFERRABLE")
    with pytest.raises(ValueError, match="isolation_level"):
        begin_statement({"isolation_level": "snapshot"})
    with pytest.raises(ValueError, match="lock_timeout"):
        begin_statement({"lock_timeout": -1})
    with pytest.raises(TypeError, match=r"unknown transaction option 'timeout'.*lock_timeout"):
        begin_statement({"timeout": 1})  # type: ignore[typeddict-unknown-key]


def test_public_signatures_resolve_at_run_time() -> None:
    """Tools reading annotations at run time (``typing.get_type_hints``) see real types."""
    resolved = 0
    public = [getattr(pgfast, name) for name in pgfast.__all__]
    public += [pgfast.abc.AsyncQueryable, pgfast.abc.Queryable]
    for cls in public:
        if not inspect.isclass(cls) or not cls.__module__.startswith("pgfast."):
            continue
        for method_name, method in inspect.getmembers(cls, inspect.isfunction):
            if not method_name.startswith("_"):
                typing.get_type_hints(method)
                resolved += 1
    assert resolved > 50
    options = typing.get_type_hints(pgfast.ConnectionPool.tx)["options"]
    assert typing.get_args(options) == (pgfast.TransactionOptions,)


def test_code_frame_marks_the_token() -> None:
    text = "SELECT *\nFROM foo\nWHERE id = $1\nINER JOIN bar ON x\nORDER BY 1\nLIMIT 2\n-- end"
    position = text.index("INER") + 1
    assert code_frame(text, position, 'syntax error at or near "INER"') == (
        "  2 | FROM foo\n"
        "  3 | WHERE id = $1\n"
        "> 4 | INER JOIN bar ON x\n"
        "    | ^^^^\n"
        "  5 | ORDER BY 1\n"
        "  6 | LIMIT 2"
    )
    lines = "\n".join(f"SELECT {i}" for i in range(1, 12))
    frame = code_frame(lines, lines.index("SELECT 10") + 8, "")
    assert frame.splitlines()[2] == "> 10 | SELECT 10"
    assert frame.splitlines()[3] == "     |        ^^"
    assert code_frame("SELECT 1 +", 11, "syntax error at end of input").endswith("|           ^")


def test_redact_params_rule() -> None:
    message = 'invalid input syntax for type integer: "ab"'
    assert redact_params(message, ["ab"]) == (
        f"invalid input syntax for type integer: {REDACTED_VALUE}"
    )
    assert redact_params("Key (id, t)=(1, xy) already exists.", None) == (
        f"Key (id, t)={REDACTED_VALUE} already exists."
    )
    assert "4242" not in redact_params("row 4242 is odd", [4242])
    assert redact_params("column x is odd", ["x"]) == "column x is odd"  # too short to tell
    assert "deep-secret" not in redact_params("got deep-secret", [{"k": ["deep-secret"]}])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=3, max_size=12), min_size=1, max_size=4), st.text(max_size=40))
def test_redaction_removes_every_long_parameter(params: list[str], noise: str) -> None:
    message = noise + " ".join(params) + noise
    redacted = redact_params(message, params)
    for value in params:
        assert value not in redacted or value in REDACTED_VALUE


def test_config_reprs_show_no_secret() -> None:
    for options in ({}, {"password": "opt-pw-123"}, {"password": lambda: "cb-pw-123"}):
        config = resolve_config(URL + "?sslpassword=key-passphrase", options)
        connection_kwargs(config)
        for obj in (config, config.options, create_pool(URL + "?sslpassword=key-passphrase")):
            shown = repr(obj)
            for secret in ("s3cr", "opt-pw-123", "cb-pw-123", "key-passphrase", "password"):
                assert secret not in shown, (secret, shown)
        assert "db.example" in repr(config)
        assert "key-passphrase" in config.secrets
    assert "sslpassword" not in repr(create_pool("host=h sslpassword=pp1234 user=u"))


def test_bad_connection_option_values_fail_at_create(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad, name in (
        ("host=db port=abc password=pw-hidden", "port"),
        ("postgresql://u:pw-hidden@db/x?port=99999", "port"),
        ("host=db,db2 port=5432,x", "port"),
        ("host=db sslmode=sometimes", "sslmode"),
        ("host=db keepalives_idle=soon", "keepalives_idle"),
        ("host=db target_session_attrs=writable", "target_session_attrs"),
    ):
        with pytest.raises(ConfigurationError, match=name) as info:
            create_pool(bad)
        assert "pw-hidden" not in str(info.value)
    assert resolve_config("host=db,db2 port=5432,", {}).conninfo  # an empty port: the default
    monkeypatch.setenv("PGPORT", "nope")
    with pytest.raises(ConfigurationError, match="PGPORT"):
        create_async_pool("host=db")
    assert resolve_config("host=db port=5433", {})  # the string wins over the variable


def test_async_password_callables() -> None:
    async def token() -> str:
        return "async-token"

    with pytest.raises(TypeError, match="create_async_pool"):
        create_pool(URL, password=token)
    create_async_pool(URL, password=token)  # awaited for each new connection
    config = resolve_config(URL, {"password": token})
    with pytest.raises(ConfigurationError, match="create_async_pool"):
        connection_kwargs(config)


def test_password_rotation_is_thread_safe() -> None:
    counter = itertools.count()
    config = resolve_config(URL, {"password": lambda: f"token-{next(counter)}"})
    errors: list[BaseException] = []
    stop = threading.Event()

    def redact_forever() -> None:
        try:
            while not stop.is_set():
                config.redact("token-1 token-2")
        except BaseException as exc:
            errors.append(exc)

    def rotate() -> None:
        for _ in range(2000):
            connection_kwargs(config)

    readers = [threading.Thread(target=redact_forever) for _ in range(2)]
    writers = [threading.Thread(target=rotate) for _ in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    # Under contention values arrive out of the counter's order, so the history
    # holds the newest arrivals: check its size, then that it follows new ones.
    assert "s3cr!t-pw" in config.secrets  # the string's own password stays
    assert len(config.secrets) == 1 + PASSWORD_HISTORY
    newest = {connection_kwargs(config)["password"] for _ in range(PASSWORD_HISTORY)}
    assert config.secrets == newest | {"s3cr!t-pw"}


def test_quoted_echoes_are_redacted() -> None:
    cases = [
        (
            'invalid input syntax for type json\nDETAIL:  Token "sk_live_abcdef123456" is invalid.',
            ['{"api_key": sk_live_abcdef123456}'],
            "DETAIL:  Token [redacted] is invalid.",
        ),
        ('malformed array literal: "ab"', ["ab"], "malformed array literal: [redacted]"),
        ('date/time field value out of range: "99"', ["1999-99"], "range: [redacted]"),
        ('invalid value "ab" for "YYYY"', ["abc"], 'invalid value [redacted] for "YYYY"'),
        ('invalid input syntax for type integer: "a"b"', ['a"b'], "integer: [redacted]"),
        (
            'duplicate key value violates unique constraint "t_pkey"\n'
            "DETAIL:  Key (lower(k))=(x)y) already exists.",
            ["x)y"],
            'constraint "t_pkey"\nDETAIL:  Key (lower(k))=[redacted] already exists.',
        ),
        ('column "id" of relation "t" is odd', ["7"], 'column "id" of relation "t" is odd'),
        ("Key (a)=(1) conflicts with existing key (a)=(2).", None, "existing key (a)=[redacted]."),
    ]
    for message, params, expected in cases:
        assert expected in redact_params(message, params), message


def test_option_typeddicts_list_every_option() -> None:
    for options in (PoolOptions, AsyncPoolOptions):
        assert options.__optional_keys__ == OPTION_NAMES
        assert not options.__required_keys__
        hints = typing.get_type_hints(options)  # resolvable at run time
        assert typing.get_args(hints["row_type"]) == ("dict", "tuple")


def merged(config: PoolConfig) -> dict[str, Any]:
    """The parameters psycopg connects with: the string's, overridden by the kwargs."""
    kwargs = {k: v for k, v in config.connect_kwargs.items() if k != "autocommit"}
    return {k: str(v) for k, v in conninfo_to_dict(config.conninfo, **kwargs).items()}


def test_pgfast_options_in_a_uri(no_env: None) -> None:
    config = resolve_config(
        "postgresql://u:p%26w@h/db?sslmode=require&prepare%5Fthreshold=0"
        "&application_name=a%20b&query_timeout=2.5",
        {},
    )
    # Taken out for libpq, everything else kept as written.
    assert config.conninfo == "postgresql://u:p%26w@h/db?sslmode=require&application_name=a%20b"
    assert (config.options.prepare_threshold, config.options.query_timeout) == (0, 2.5)
    assert merged(config)["password"] == "p&w"
    assert (
        resolve_config("postgresql://h/db?prepare_threshold=", {}).options.prepare_threshold is None
    )
    only = resolve_config("postgresql://h/db?query_timeout=1e1", {})
    assert (only.conninfo, only.options.query_timeout) == ("postgresql://h/db", 10.0)
    # An option's name inside another option's value is not the option.
    config = resolve_config("postgresql://h/db?application_name=prepare_threshold%3D1", {})
    assert config.options.prepare_threshold == 5
    assert merged(config)["application_name"] == "prepare_threshold=1"
    # A "?" or "&" in the password is not the query.
    config = resolve_config("postgresql://u:a?prepare_threshold=1&b@h/db", {})
    assert config.options.prepare_threshold == 5 and config.secrets == {"a?prepare_threshold=1&b"}


def test_pgfast_options_in_a_key_value_string(no_env: None) -> None:
    conninfo = (
        "host=h application_name='my app\\'s' prepare_threshold = 2 "
        "password='pa ss\\\\' query_timeout='0.5' options='-c query_timeout=7'"
    )
    config = resolve_config(conninfo, {})
    assert (config.options.prepare_threshold, config.options.query_timeout) == (2, 0.5)
    assert config.conninfo == (
        "host=h application_name='my app\\'s'  password='pa ss\\\\'  options='-c query_timeout=7'"
    )
    params = merged(config)
    assert params["application_name"] == "my app's" and params["password"] == "pa ss\\"
    assert params["options"].startswith("-c query_timeout=7")
    # The last one wins, as libpq's own options; '' is the empty value.
    config = resolve_config("prepare_threshold=1 host=h prepare_threshold=''", {})
    assert config.options.prepare_threshold is None and merged(config) == merged(
        resolve_config("host=h", {})
    )
    # After "=", libpq skips blanks: "prepare_threshold= host=h" gives it "host=h".
    with pytest.raises(ConfigurationError, match="prepare_threshold"):
        resolve_config("prepare_threshold= host=h", {})
    assert parse_keyword_value("a=1 b = 'x y' c=\\ ") is not None
    assert parse_keyword_value("a=1 b") is None and parse_keyword_value("a='x") is None


def test_keyword_options_override_the_string(no_env: None) -> None:
    url = "postgresql://h/db?prepare_threshold=1&query_timeout=3"
    config = resolve_config(url, {"prepare_threshold": None, "query_timeout": 9})
    assert (config.options.prepare_threshold, config.options.query_timeout) == (None, 9)
    config = resolve_config(url, {"prepare_threshold": 7})
    assert (config.options.prepare_threshold, config.options.query_timeout) == (7, 3.0)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://h/db?prepare_threshold=abc",
        "postgresql://h/db?prepare_threshold=-1",
        "postgresql://h/db?prepare_threshold=1.5",
        "postgresql://h/db?prepare_threshold",
        "postgresql://h/db?prepare_threshold=%zz",
        "host=h prepare_threshold=none",
        "postgresql://h/db?query_timeout=0",
        "postgresql://h/db?query_timeout=-1",
        "postgresql://h/db?query_timeout=inf",
        "postgresql://h/db?query_timeout=nan",
        "postgresql://h/db?query_timeout=1_000",
        "host=h query_timeout=soon",
    ],
)
def test_malformed_pgfast_options_in_the_string(conninfo: str, no_env: None) -> None:
    name = "prepare_threshold" if "prepare" in conninfo else "query_timeout"
    with pytest.raises(ConfigurationError, match=name):
        resolve_config(conninfo, {})
    with pytest.raises(ConfigurationError, match=name):  # even when a keyword overrides it
        resolve_config(conninfo, {name: None})


def test_connect_timeout_from_the_string(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve_config("postgresql://h/db?connect_timeout=1", {})
    assert merged(config)["connect_timeout"] == "1"  # not pgfast's default 10
    # psycopg waits at least 2 s, as libpq does: that is what the pool waits for.
    assert config.connect_timeout == config.options.connect_timeout == 2.0
    assert resolve_config("host=h connect_timeout=5", {}).connect_timeout == 5.0
    config = resolve_config("postgresql://h/db?connect_timeout=5", {"connect_timeout": 3})
    assert merged(config)["connect_timeout"] == "3" and config.connect_timeout == 3.0
    config = resolve_config("host=h", {"connect_timeout": 2.5})  # libpq counts whole seconds
    assert merged(config)["connect_timeout"] == "3" and config.connect_timeout == 3.0
    config = resolve_config("host=h", {})
    assert merged(config)["connect_timeout"] == "10" and config.connect_timeout == 10.0
    for bad in ("abc", "1.5", "99999999999", ""):
        conninfo = "host=h connect_timeout=" + (bad or "''")
        with pytest.raises(ConfigurationError, match="connect_timeout"):
            resolve_config(conninfo, {})
        with pytest.raises(ConfigurationError, match="connect_timeout"):
            resolve_config(conninfo, {"connect_timeout": 3})
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    config = resolve_config("host=h", {})
    assert "connect_timeout" not in config.connect_kwargs and config.connect_timeout == 4.0
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="PGCONNECT_TIMEOUT"):
        resolve_config("host=h", {})
    assert resolve_config("host=h", {"connect_timeout": 3}).connect_timeout == 3.0  # not read
    assert resolve_config("host=h connect_timeout=6", {}).connect_timeout == 6.0


def test_keepalives_unless_the_string_sets_them(no_env: None) -> None:
    params = merged(resolve_config("postgresql://h/db", {}))
    assert {k: params[k] for k in KEEPALIVE_DEFAULTS} == {
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "tcp_user_timeout": "60000",
    }
    params = merged(resolve_config("postgresql://h/db?keepalives_idle=5&tcp_user_timeout=0", {}))
    assert (params["keepalives_idle"], params["tcp_user_timeout"], params["keepalives"]) == (
        "5",
        "0",
        "1",
    )
    params = merged(resolve_config("host=h keepalives=0", {}))
    assert params["keepalives"] == "0"
    # A service file may set them: a keyword argument would override it.
    params = merged(resolve_config("service=mine", {}))
    assert not set(KEEPALIVE_DEFAULTS) & set(params)
    with pytest.raises(ConfigurationError, match="keepalives_count"):
        resolve_config("host=h keepalives_count=many", {})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["host", "dbname", "application_name", "options", "user"]),
            st.text(alphabet=" ab'\\=?&%\t", max_size=8),
        ),
        max_size=4,
    ),
    st.sampled_from(["", "prepare_threshold=3", "query_timeout='1.5'"]),
)
def test_splitting_keeps_libpqs_reading(pairs: list[tuple[str, str]], own: str) -> None:
    """Taking pgfast's options out of a key=value string changes nothing else libpq reads."""
    from psycopg.conninfo import make_conninfo

    written = [make_conninfo("", **{k: v}) if v else f"{k}=''" for k, v in pairs]
    conninfo = " ".join([*written[:1], own, *written[1:]])
    stripped, found = split_string_options(conninfo)
    assert conninfo_to_dict(stripped) == conninfo_to_dict(" ".join(written))
    assert bool(found) == bool(own)
