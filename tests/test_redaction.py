"""No password in configuration errors; libpq's and the server's own words kept in query errors."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgfast._config import REDACTED, resolve_config
from pgfast._error_text import REDACTED_VALUE, redact_params
from pgfast._exceptions import ConfigurationError
from pgfast._factories import create_async_pool, create_pool
from pgfast._sql import SQLQuery, sql

# Passwords are drawn from letters that libpq's messages never spell in upper
# case (I, P, R, U, V: "URI", "IPv6"), digits, and every character that means
# something to libpq's parsers. A piece of a password is any run of 3 or more
# of its characters holding a letter: a run of digits or punctuation alone
# ("=" in quotes, a position) may occur in libpq's own words.
LETTERS = "ABCDEFGHJKLMNOQSTWXYZ"
PASSWORD_CHARS = LETTERS + "0123456789" + " \t@/:?&=%#'\"\\,[]"
passwords = st.text(alphabet=PASSWORD_CHARS, min_size=3, max_size=16).filter(
    lambda p: any(c in LETTERS for c in p)
)


def pieces(password: str) -> set[str]:
    n = len(password)
    return {
        password[i:j]
        for i in range(n)
        for j in range(i + 3, n + 1)
        if any(c in LETTERS for c in password[i:j])
    }


def assert_hidden(text: str, password: str) -> None:
    for piece in pieces(password):
        assert piece not in text, (piece, text)


def outcome(conninfo: str) -> tuple[bool, str]:
    """(failed?, the error message or, on success, everything shown about the config)."""
    try:
        config = resolve_config(conninfo, {})
    except ConfigurationError as exc:
        return True, str(exc)
    return False, repr(config) + config.display


KEY_VALUE_TAILS = ["", " dbname=x", " port", " hots=x", " port=abc", " query_timeout=x"]
URI_TAILS = ["", "?application_name=app", "?port=abc", "?query_timeout=x", "?hots=1", "?x"]


@pytest.mark.nodb
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(password=passwords, tail=st.sampled_from(KEY_VALUE_TAILS))
def test_no_piece_of_a_password_in_key_value_errors(password: str, tail: str) -> None:
    conninfo = f"host=localhost password={password}{tail}"
    _, shown = outcome(conninfo)
    assert_hidden(shown, password)


@pytest.mark.nodb
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(password=passwords, tail=st.sampled_from(URI_TAILS), user=st.sampled_from(["u", ""]))
@example(password="%A0BCD", tail="", user="u")  # percent-encodes a byte that is not UTF-8
def test_no_piece_of_a_password_in_uri_errors(password: str, tail: str, user: str) -> None:
    conninfo = f"postgresql://{user}:{password}@localhost:5432/db{tail}"
    _, shown = outcome(conninfo)
    assert_hidden(shown, password)


@pytest.mark.nodb
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(password=passwords)
def test_no_piece_of_a_password_given_as_a_uri_parameter(password: str) -> None:
    from urllib.parse import quote

    # Unencoded, the password may be cut at "&" and "="; encoded, it is whole.
    for written in (password, quote(password, safe="")):
        _, shown = outcome(f"postgresql://localhost/db?password={written}&hots=1")
        assert_hidden(shown, password)


@pytest.mark.nodb
def test_unquoted_space_in_a_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        create_pool("host=localhost password=abc def dbname=x")
    message = str(info.value)
    assert "def" not in message and "abc" not in message
    assert f'missing "=" after "{REDACTED}"' in message
    assert "key='a b'" in message  # how to write it
    with pytest.raises(ConfigurationError) as info:
        create_pool("host=localhost password=abcdef ghijkl=mno dbname=x")
    assert "ghijkl" not in str(info.value) and "invalid connection option" in str(info.value)
    # Quoted, the same password is read whole.
    config = resolve_config("host=localhost password='abc def' dbname=x", {})
    assert config.secrets == {"abc def"}


@pytest.mark.nodb
def test_unencoded_at_or_slash_in_a_uri_password() -> None:
    for conninfo in (
        "postgresql://u:P@SS W@h/db",  # libpq would read the host "SS W@h"
        "postgresql://u:PA5432/WORD@h/db",  # libpq: host u, port PA5432, dbname WORD@h/db
        "postgresql://u:5432/WORD@h/db",  # ... and with a numeric "port" it would connect
        "postgresql://h/MY@DB",  # a database name spells "@" as %40
    ):
        with pytest.raises(ConfigurationError, match="percent-encoded") as info:
            create_async_pool(conninfo)
        for piece in ("SS W", "PA5", "WORD", "5432", "MY@DB"):
            assert piece not in str(info.value)
    assert resolve_config("postgresql://u:p%40ss%2Fw@h/my%40db", {}).secrets == {"p@ss/w"}
    # "?" and ":" need no encoding in a password; "@" may follow in the query.
    config = resolve_config("postgresql://u:a?b:c@h/db?application_name=me@host", {})
    assert config.secrets == {"a?b:c"}


@pytest.mark.nodb
def test_the_password_is_not_echoed_with_a_malformed_option() -> None:
    for conninfo, name in (
        ("postgresql://u:hunter22@h/db?query_timeout=hunter22", "query_timeout"),
        ("postgresql://u:hunter22@h/db?port=hunter22", "port"),
        ("host=h password=hunter22 connect_timeout=hunter22", "connect_timeout"),
        ("host=h password='hunter22' prepare_threshold=hunter22", "prepare_threshold"),
    ):
        with pytest.raises(ConfigurationError, match=name) as info:
            resolve_config(conninfo, {})
        assert "hunter" not in str(info.value), str(info.value)
    with pytest.raises(ConfigurationError, match="query_timeout") as info:
        resolve_config("host=h query_timeout=abc", {})
    assert "'abc'" in str(info.value)  # not a password: shown


# -- query errors: libpq's and the server's own numbers stay ----------------------


@pytest.mark.nodb
def test_kept_phrases_keep_their_numbers() -> None:
    params = [65535, 100, "sk_live_secret", 2]
    for message in (
        "sending query and params failed: number of parameters must be between 0 and 65535",
        "value too long for type character varying(100)",
        "there is no parameter $100",
        'bind message supplies 100 parameters, but prepared statement "" requires 65535',
    ):
        assert redact_params(message, params) == message
    # A value echoed next to a kept phrase is still redacted.
    assert redact_params(
        "number of parameters must be between 0 and 65535 (sk_live_secret, 65535)", params
    ) == (f"number of parameters must be between 0 and 65535 ({REDACTED_VALUE}, {REDACTED_VALUE})")
    # ... and a phrase that only resembles a kept one does not keep its number.
    assert redact_params("between 0 and 65535", params) == f"between 0 and {REDACTED_VALUE}"
    assert redact_params("parameter $100 and 65535 more", params) == (
        f"parameter ${REDACTED_VALUE} and {REDACTED_VALUE} more"
    )
    assert redact_params("Failing row contains (100, x).", params) == (
        f"Failing row contains {REDACTED_VALUE}."
    )


TOO_MANY = 65536  # libpq refuses more than 65535 parameters, before sending anything


def too_many_parameters() -> SQLQuery:
    values: list[object] = list(range(TOO_MANY))
    values[7] = 65535
    values[8] = "sk_live_not_shown"
    items = sql.join([sql.value(v) for v in values])
    return sql("SELECT array_length(ARRAY[{}]::text[], 1)", items)


def test_libpq_and_server_words_keep_their_numbers(pg_url: str) -> None:
    with create_pool(pg_url) as db:
        with pytest.raises(psycopg.OperationalError) as info:
            db.query(too_many_parameters())
        message = str(info.value)
        assert "number of parameters must be between 0 and 65535" in message
        assert "sk_live_not_shown" not in message
        with db.transaction() as tx:
            tx.execute(sql("CREATE TEMP TABLE kept_words (v varchar(100)) ON COMMIT DROP"))
            with (
                pytest.raises(psycopg.errors.StringDataRightTruncation) as error,
                tx.transaction() as savepoint,
            ):
                savepoint.execute(
                    sql("INSERT INTO kept_words SELECT {} WHERE {} > 0", "x" * 101, 100)
                )
            assert str(error.value) == "value too long for type character varying(100)"


async def test_libpq_limit_keeps_its_number_async(pg_url: str) -> None:
    async with create_async_pool(pg_url) as db:
        with pytest.raises(psycopg.OperationalError) as info:
            await db.query(too_many_parameters())
        assert "number of parameters must be between 0 and 65535" in str(info.value)
        assert "sk_live_not_shown" not in str(info.value)
