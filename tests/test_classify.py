"""The read/write classifier: both twins, a statement table, parity and properties.

The statement table is also replayed against a real hot standby: every
statement classified read-only must be accepted there inside
``BEGIN READ ONLY``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from conftest import twin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from pgfast import _classify_py
from pgfast.testing import LocalCluster

# Texts without any statement: nothing to prove read-only.
NOTHING = ["", "   \n\t", "-- only a comment", "/* only a comment */", ";", " ; ;; "]

READS = [
    "SELECT 1",
    "select 1",
    "SeLeCt 1",
    "SELECT * FROM t",
    "SELECT id, a FROM t WHERE id = $1",
    "SELECT * FROM t WHERE a = $1 AND b > $2",
    "SELECT $1::int + $2::int",
    "SELECT ($1)",
    "WITH x AS (SELECT id FROM t) SELECT * FROM x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r",
    "with t2 as materialized (select * from t) select * from t2",
    "VALUES (1, 'a'), (2, 'b')",
    "VALUES (1) ORDER BY 1",
    "TABLE t",
    "TABLE t ORDER BY id",
    "SHOW search_path",
    "SHOW ALL",
    "show transaction_read_only",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM t WHERE id = 1",
    "EXPLAIN (FORMAT 'yaml') TABLE t",
    "EXPLAIN VERBOSE VALUES (1)",
    "explain analyse verbose select 1",
    "EXPLAIN ANALYZE (SELECT 1)",
    "EXPLAIN (COSTS OFF) WITH x AS (SELECT 1) SELECT * FROM x",
    "(SELECT 1) UNION (SELECT 2)",
    "((SELECT id FROM t))",
    "SELECT 'insert into t values (1)'",
    "SELECT 'it''s; DELETE FROM t'",
    r"SELECT E'\' DELETE FROM t'",
    r"SELECT E'\\n', e'it\'s', E'a''b'",
    "SELECT $$ DROP TABLE t; $$",
    "SELECT $fn$ UPDATE t SET a = 'x' $fn$",
    "SELECT $a$ $b$ delete $b$ $a$",
    "SELECT $q$it's$q$, $_1$ -- not a comment $_1$",
    'SELECT "update" FROM "delete"',
    'SELECT "into", "for" FROM "delete"',
    'SELECT "update"."into" FROM "delete" AS "update"',
    "SELECT 1 -- DELETE FROM t",
    "SELECT 1 /* INSERT INTO t VALUES (1) */",
    "SELECT 1 /* ; DELETE FROM t; */",
    "/* leading */ SELECT 1",
    "-- leading\nSELECT 1",
    "-- leading\r\nSELECT 1\r\n-- trailing",
    "SELECT /* outer /* nested insert */ still a comment */ 1",
    "SELECT 1 +-- comment\n 2",
    "SELECT 1 */* comment */ 2",
    "\t\f SELECT\n1\t",
    "SELECT 1; SELECT 2",
    "SELECT 1;",
    ";SELECT 1;;",
    "SELECT 1; (VALUES (2)); TABLE t; SHOW search_path",
    "SELECT count(*) FROM t",
    "SELECT plus1(1)",
    "SELECT nextval FROM (SELECT 1 AS nextval) x",
    "SELECT setval, lo_x FROM (VALUES (1, 2)) v(setval, lo_x)",
    'SELECT "nextval" FROM (VALUES (1)) v("nextval")',
    "SELECT lower(a), coalesce(b, 0) FROM t",
    "SELECT * FROM t FOR READ ONLY",
    "SELECT substring('abc' FROM 1 FOR 2)",
    "SELECT substring('abc' FROM 1 FOR (2))",
    r"SELECT U&'d\0061t\+000061'",
    "SELECT B'1010', X'1F', N'text'",
    "SELECT txid_current_snapshot(), txid_current_if_assigned()",
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()",
    "SELECT now(), current_user",
    "SELECT t.id FROM t JOIN u ON u.t_id = t.id",
    "SELECT a FROM t WHERE a LIKE 'x%' ORDER BY a LIMIT 10 OFFSET 5",
    "SELECT ARRAY[1, 2] @> ARRAY[1]",
    """SELECT '{"a": 1}'::jsonb -> 'a'""",
    "SELECT CASE WHEN b > 0 THEN 'update' ELSE 'delete' END FROM t",
    "SELECT xmin, ctid FROM t",
    'SELECT 1 AS "FOR", 2 AS "share"',
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT pg_sleep(0), version(), current_setting('search_path')",
    "SELECT 'x' FROM t WHERE id IN (SELECT t_id FROM u)",
    "SELECT 1 FROM t WHERE a = 'for update'",
    "SELECT key, no, share FROM (VALUES (1, 2, 3)) v(key, no, share)",
    "SELECT café FROM (SELECT 1 AS café) x",
    'SELECT \'ünïcödé 🐘\', "ünïcödé" FROM (SELECT 1 AS "ünïcödé") x',
    "SELECT 1 AS a$b",
    "SELECT pg_catalog.lower('X')",
    "SELECT table_to_xml('t', true, true, '')",  # a table's rows, no SQL text
]

WRITES = [
    # plain writes and everything that is not SELECT / WITH / VALUES / TABLE / SHOW / EXPLAIN
    "INSERT INTO t VALUES (1)",
    "insert into t values (1)",
    "UPDATE t SET a = 'x'",
    "DELETE FROM t",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DO NOTHING",
    "TRUNCATE t",
    "CREATE TABLE x (id int)",
    "DROP TABLE t",
    "ALTER TABLE t ADD c int",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "COPY (SELECT 1) TO STDOUT",
    "CALL p()",
    "DO $$ BEGIN END $$",
    "LOCK TABLE t",
    "SET search_path = public",
    "SET LOCAL statement_timeout = 0",
    "RESET ALL",
    "BEGIN",
    "START TRANSACTION READ ONLY",
    "COMMIT",
    "ROLLBACK",
    "VACUUM t",
    "ANALYZE t",
    "LISTEN ch",
    "NOTIFY ch",
    "UNLISTEN *",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE p",
    "DECLARE c CURSOR FOR SELECT 1",
    "FETCH c",
    "CLOSE c",
    "GRANT SELECT ON t TO public",
    "REFRESH MATERIALIZED VIEW mv",
    "CLUSTER t",
    "REINDEX TABLE t",
    "CHECKPOINT",
    "DISCARD ALL",
    "LOAD 'x'",
    "COMMENT ON TABLE t IS 'x'",
    # write and side-effect functions
    "SELECT nextval('s')",
    "SELECT NEXTVAL('s')",
    "SELECT pg_catalog.nextval('s')",
    "SELECT PG_CATALOG . NextVal ('s')",
    "SELECT \"nextval\"('s')",
    "SELECT pg_catalog.\"nextval\"('s')",
    "SELECT nextval /* c */ ('s')",
    "SELECT nextval -- c\n('s')",
    "SELECT setval('s', 1)",
    "SELECT currval('s')",
    "SELECT lastval()",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_xact_lock_shared(1)",
    "SELECT pg_try_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1, 2)",
    "SELECT pg_advisory_unlock_all()",
    "SELECT txid_current()",
    "SELECT pg_current_xact_id()",
    "SELECT pg_notify('ch', 'x')",
    "SELECT lo_create(0)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_unlink(1)",
    "SELECT pg_catalog.lo_from_bytea(0, 'x')",
    "SELECT lowrite(0, 'x')",
    "SELECT set_config('a.b', 'c', false)",
    "SELECT setseed(0.5)",
    "SELECT pg_switch_wal()",
    "SELECT pg_create_restore_point('x')",
    "SELECT pg_create_physical_replication_slot('x')",
    "SELECT pg_create_logical_replication_slot('x', 'test_decoding')",
    "SELECT pg_drop_replication_slot('x')",
    "SELECT pg_terminate_backend(1)",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_reload_conf()",
    "SELECT pg_rotate_logfile()",
    "SELECT dblink_exec('x', 'y')",
    "SELECT pg_stat_reset()",
    "SELECT pg_stat_reset_shared('bgwriter')",
    "SELECT pg_logical_emit_message(true, 'p', 'x')",
    "SELECT pg_current_wal_lsn()",
    "SELECT * FROM t WHERE id = nextval('s')",
    # functions that run SQL given as text: whatever it does, even on a standby
    "SELECT query_to_xml('select pg_advisory_lock(42)', true, true, '')",
    "SELECT pg_catalog.query_to_xmlschema('select 1', true, true, '')",
    "SELECT query_to_xml_and_xmlschema('select 1', true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT cursor_to_xmlschema('c', true, true, '')",
    "SELECT * FROM ts_stat('select to_tsvector(pg_advisory_lock(43)::text)')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')",
    "SELECT * FROM crosstab('select 1, 2, 3') AS ct(a int, b int)",
    "SELECT * FROM connectby('t', 'id', 'b', '1', 0) AS c(id int, b int, level int)",
    "SELECT * FROM dblink('dbname=x', 'select 1') AS d(a int)",
    # extension functions that write or take locks a standby refuses
    "SELECT heap_force_kill('t'::regclass, ARRAY['(0,1)']::tid[])",
    "SELECT heap_force_freeze('t'::regclass, ARRAY['(0,1)']::tid[])",
    "SELECT bt_index_parent_check('t_pkey')",
    "VALUES (nextval('s'))",
    "WITH x AS (SELECT setval('s', 1)) SELECT 1",
    # row locks, SELECT INTO, data-modifying CTEs
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE",
    "select * from t for update skip locked",
    "SELECT * FROM t FOR UPDATE OF t NOWAIT",
    "SELECT * FROM t FOR /* c */ SHARE",
    "SELECT * FROM t\nFOR\n-- c\nKEY SHARE",
    "SELECT * INTO t2 FROM t",
    "select id into temp t3 from t",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
    "WITH u2 AS (UPDATE t SET b = 1 RETURNING *) SELECT 1",
    "WITH m AS (MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DO NOTHING) SELECT 1",
    "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
    "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
    # EXPLAIN of anything but a read
    "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE) DELETE FROM t",
    "EXPLAIN ANALYZE EXECUTE p",
    "EXPLAIN CREATE TABLE x AS SELECT 1",
    "EXPLAIN DECLARE c CURSOR FOR SELECT 1",
    "EXPLAIN (SELECT 1)",
    "EXPLAIN",
    "EXPLAIN ANALYZE SELECT nextval('s')",
    "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
    # several statements: one write is enough
    "SELECT 1; INSERT INTO t VALUES (1)",
    "SELECT 1; DELETE FROM t; SELECT 2",
    "SELECT 1; BEGIN",
    "SHOW x; SET x = 1",
    r"SELECT E'\'' ; DELETE FROM t",
    "SELECT 1 /* */ ; UPDATE t SET b = 2",
    # nothing to prove, or not lexable: cannot prove read-only
    *NOTHING,
    "SELECT 'unterminated",
    "SELECT /* unterminated /* nested */",
    "SELECT $$ unterminated",
    "SELECT $a$ unterminated $b$",
    'SELECT "unterminated',
    "SELECT $ 1",
    "SELECT $x",
    r"SELECT 'a\'; DELETE FROM t; --'",
    "SELECT 1\x00; DELETE FROM t",
    '"select" 1',
    "'x' SELECT",
    ") SELECT 1",
    "(INSERT INTO t VALUES (1))",
    r"SELECT U&'\0061\'; DELETE FROM t; --'",
    r"SELECT U&" '"nextv\\0061l"' "('s')",
    "SELECT (1)) ; DELETE FROM t",
    "SELECT U&\"nextv!0061l\" UESCAPE '!'('s')",
    'SELECT U&"x" FROM t',
]

# Statements a DB run needs parameters for: the replica test sends each "1".
_PARAM = re.compile(r"\$(\d+)(?!\$)")

# The JS anchor (@databases/pg-cluster) sends a query to the primary when this matches.
ANCHOR = re.compile(r"\b(alter|create|delete|drop|insert|truncate|update|vacuum)\b", re.IGNORECASE)


@pytest.mark.nodb
def test_table_is_large_and_distinct() -> None:
    assert len(READS) + len(WRITES) >= 80
    assert len(set(READS + WRITES)) == len(READS) + len(WRITES)


@pytest.mark.nodb
@pytest.mark.parametrize("text", READS)
def test_reads(impl: str, text: str) -> None:
    assert twin("_classify", impl).is_read_only(text) is True


@pytest.mark.nodb
@pytest.mark.parametrize("text", WRITES)
def test_writes(impl: str, text: str) -> None:
    assert twin("_classify", impl).is_read_only(text) is False


@pytest.mark.nodb
def test_anchor_misses_are_caught(impl: str) -> None:
    """Writes the anchor's regex routes to a replica; we send all to the primary."""
    misses = [w for w in WRITES if w.strip() and not ANCHOR.search(w)]
    for needed in ("MERGE", "COPY", "CALL", "DO ", "LOCK", "nextval(", "INTO t2"):
        assert any(needed in w for w in misses), needed
    is_read_only = twin("_classify", impl).is_read_only
    assert [w for w in misses if is_read_only(w)] == []


@pytest.mark.nodb
@pytest.mark.parametrize("name", sorted(_classify_py.WRITE_FUNCTIONS))
def test_every_write_function(impl: str, name: str) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    assert is_read_only(f"SELECT {name}(1)") is False
    assert is_read_only(f"SELECT {name.upper()} (1)") is False
    assert is_read_only(f"SELECT pg_catalog.{name}/**/(1)") is False
    assert is_read_only(f'SELECT "{name}"(1)') is False
    assert is_read_only(f"SELECT {name} FROM t") is True
    assert is_read_only(f'SELECT "{name.upper()}"(1)') is True  # another function
    assert is_read_only(f"SELECT {name}x(1)") is True


@pytest.mark.nodb
def test_write_function_tables_do_not_overlap() -> None:
    prefixes = _classify_py.WRITE_FUNCTION_PREFIXES
    assert [n for n in _classify_py.WRITE_FUNCTIONS if n.startswith(prefixes)] == []


@pytest.mark.nodb
@pytest.mark.parametrize("prefix", _classify_py.WRITE_FUNCTION_PREFIXES)
def test_every_write_function_family(impl: str, prefix: str) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    assert is_read_only(f"SELECT {prefix}x_é(1)") is False
    assert is_read_only(f'SELECT "{prefix}é"(1)') is False
    assert is_read_only(f"SELECT {prefix.upper()}X(1)") is False
    assert is_read_only(f"SELECT x{prefix}(1)") is True


@pytest.mark.nodb
def test_twins_share_the_tables(impl: str) -> None:
    module = twin("_classify", impl)
    assert module.WRITE_FUNCTIONS == _classify_py.WRITE_FUNCTIONS
    assert module.WRITE_FUNCTION_PREFIXES == _classify_py.WRITE_FUNCTION_PREFIXES


@pytest.mark.nodb
@pytest.mark.parametrize("bad", [None, b"SELECT 1", 1, ["SELECT 1"]])
def test_not_a_str(impl: str, bad: object) -> None:
    with pytest.raises(TypeError, match=f"as a str, not {type(bad).__name__}"):
        twin("_classify", impl).is_read_only(bad)


# Property-based tests. The compiled twin is checked against the pure one.


def _examples(n: int) -> settings:
    # ``impl`` only names the twin under test: nothing to reset between examples.
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


_TOKENS = [
    "SELECT", "select", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "ANALYZE", "VERBOSE",
    "INSERT", "UPDATE", "delete", "MERGE", "INTO", "FOR", "for", "SHARE", "KEY", "NO", "READ",
    "nextval", "NEXTVAL", "pg_catalog", "lo_import", "pg_advisory_lock", "set_config", "count",
    "t", "x", "é", "1", "$1", "$2", "$$", "$a$", "$A$", "$", "'", "''", "E'", "e'", "U&'",
    'U&"', "B'", "X'", "N'", '"', '""', "\\", "\\'", "(", ")", "((", ";", ",", ".", "*", "+",
    "-", "--", "/*", "*/", "/", "\n", "\r", " ", "\t", "\x00", "::", "[", "]",
]  # fmt: skip

token_soup = st.lists(
    st.tuples(st.sampled_from(_TOKENS), st.sampled_from(["", " ", "\n"])), max_size=25
).map(lambda parts: "".join(tok + sep for tok, sep in parts))
sqlish_text = st.text(alphabet=st.sampled_from("SELCTINRUPDAWHFOKYxtne$'\"(); -/*\\\n1é&"))


@pytest.mark.nodb
@_examples(400)
@given(text=st.one_of(st.text(max_size=60), token_soup, sqlish_text))
def test_parity_with_pure_twin(impl: str, text: str) -> None:
    compiled = twin("_classify", impl).is_read_only
    assert compiled(text) is _classify_py.is_read_only(text)


@pytest.mark.nodb
@_examples(200)
@given(text=st.one_of(st.text(max_size=60), token_soup))
def test_appending_a_write_makes_it_a_write(impl: str, text: str) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    assert is_read_only(text + "\n;INSERT INTO t VALUES (1)") is False
    assert is_read_only(text + "\n;SELECT nextval('s')") is False


_COMMENT_OR_SPACE = st.sampled_from(
    [" ", "\n", "\t", "\r\n", "-- c; DELETE\n", "/* c */", "/* a /* insert */ b */", ";", ""]
)


@pytest.mark.nodb
@_examples(200)
@given(
    read=st.sampled_from(READS),
    before=st.lists(_COMMENT_OR_SPACE, max_size=4).map("".join),
    after=st.lists(_COMMENT_OR_SPACE, max_size=4).map("".join),
)
def test_comments_and_whitespace_keep_a_read(impl: str, read: str, before: str, after: str) -> None:
    # A read ending in a line comment needs a newline before more text.
    assert twin("_classify", impl).is_read_only(f"{before}\n{read}\n{after}") is True


@pytest.mark.nodb
@_examples(200)
@given(first=st.sampled_from(READS), second=st.sampled_from(READS + WRITES))
def test_statement_lists(impl: str, first: str, second: str) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    assert is_read_only(f"{first}\n;\n{second}") is (is_read_only(second) or second in NOTHING)


@pytest.mark.nodb
@_examples(200)
@given(content=st.text(max_size=40))
def test_literals_and_identifiers_hide_keywords(impl: str, content: str) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    content = content.replace("\x00", "")
    string = content.replace("\\", "").replace("'", "''")
    ident = content.replace('"', '""') or "x"
    tag = "$tag$" if "$tag" not in content else "$other_tag$"
    quoted = content.replace("$", "") if tag == "$other_tag$" else content
    assert is_read_only(f"SELECT '{string}' || 'x'") is True
    assert is_read_only(f"SELECT {tag}{quoted}{tag}") is True
    assert is_read_only(f'SELECT "{ident}" FROM t') is True
    assert is_read_only(f"SELECT 1 /* {content.replace('*', '')} */") is True


@pytest.mark.nodb
@_examples(200)
@given(data=st.data())
def test_keywords_are_case_insensitive(impl: str, data: st.DataObject) -> None:
    is_read_only = twin("_classify", impl).is_read_only
    text = data.draw(st.sampled_from([s for s in READS + WRITES if not set("'\"$") & set(s)]))
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    mixed = "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))
    assert is_read_only(mixed) is is_read_only(text)


# The table against a real hot standby.

_SCHEMA = """
DROP SCHEMA IF EXISTS pgfast_classify CASCADE;
CREATE SCHEMA pgfast_classify;
SET search_path = pgfast_classify;
CREATE TABLE t (id int PRIMARY KEY, a text, b int);
CREATE TABLE u (id int, t_id int);
CREATE TABLE "delete" ("update" int, "into" text, "for" int);
CREATE SEQUENCE s;
CREATE FUNCTION plus1(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';
INSERT INTO t VALUES (1, 'x', 2), (2, 'y', 0);
INSERT INTO u VALUES (1, 1);
"""


def _value(conn: pq.abc.PGconn, query: str) -> str:
    result = conn.exec_(query.encode())
    value = result.get_value(0, 0) if result.status == pq.ExecStatus.TUPLES_OK else None
    assert value is not None, f"{query}: {(result.error_message or b'').decode()}"
    return value.decode()


@pytest.fixture(scope="module")
def standby_url(pg_cluster: LocalCluster) -> Iterator[str]:
    """A replica of ``pg_cluster`` whose replay has caught up with the test schema."""
    identity = "SELECT system_identifier FROM pg_control_system()"
    primary = pq.PGconn.connect(pg_cluster.primary_url.encode())
    try:
        assert primary.exec_(_SCHEMA.encode()).status == pq.ExecStatus.COMMAND_OK
        # insert, not write, position: with synchronous_commit=off the commit
        # record may not be written yet when COMMIT returns.
        lsn = _value(primary, "SELECT pg_current_wal_insert_lsn()")
        system = _value(primary, identity)
    finally:
        primary.finish()
    url = pg_cluster.replica_urls[0]
    replica = pq.PGconn.connect(url.encode())
    try:
        assert _value(replica, "SELECT pg_is_in_recovery()") == "t"
        assert _value(replica, identity) == system, "the replica URL reaches another cluster"
        deadline = time.monotonic() + 30
        while _value(replica, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") != "t":
            assert time.monotonic() < deadline, "the replica did not replay the test schema"
            time.sleep(0.05)
    finally:
        replica.finish()
    yield url


def _run_read_only(conn: pq.abc.PGconn, text: str) -> pq.abc.PGresult:
    """Run ``text`` in ``BEGIN READ ONLY`` (parameters, if any, all "1")."""
    conn.exec_(b"BEGIN READ ONLY")
    try:
        params = {int(n) for n in _PARAM.findall(text)}
        if params:
            return conn.exec_params(text.encode(), [b"1"] * max(params))
        return conn.exec_(text.encode())
    finally:
        conn.exec_(b"ROLLBACK")


# Writes of the table a standby refuses: the control that the replay below can fail.
REFUSED = ("INSERT INTO t VALUES (1)", "SELECT nextval('s')", "SELECT * FROM t FOR UPDATE")


def test_reads_run_on_a_hot_standby(standby_url: str) -> None:
    ok = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)
    conn = pq.PGconn.connect(standby_url.encode())
    try:
        conn.exec_(b"SET search_path = pgfast_classify")
        results = {text: _run_read_only(conn, text) for text in READS}
        # The control: writes from the table are refused there (SQLSTATE 25006).
        refused = {
            text: _run_read_only(conn, text).error_field(pq.DiagnosticField.SQLSTATE)
            for text in REFUSED
        }
    finally:
        conn.finish()
    failures = {
        text: (result.error_message or b"").decode()
        for text, result in results.items()
        if result.status not in ok
    }
    assert failures == {}
    assert refused == dict.fromkeys(REFUSED, b"25006")
    assert set(REFUSED) <= set(WRITES)


# Functions that run SQL text: a standby accepts them (even in a READ ONLY
# transaction) whatever that SQL does, so only the classifier keeps them off it.
SQL_TEXT_RUNNERS = (
    "SELECT query_to_xml('select pg_advisory_xact_lock(42)', true, true, '')",
    "SELECT count(*) FROM ts_stat('select to_tsvector(pg_advisory_xact_lock(43)::text)')",
    "SELECT query_to_xml('select set_config(''search_path'', ''evil'', true)', true, true, '')",
)


@pytest.mark.parametrize("text", SQL_TEXT_RUNNERS)
def test_functions_running_sql_text_are_writes_a_standby_would_run(
    impl: str, standby_url: str, text: str
) -> None:
    assert twin("_classify", impl).is_read_only(text) is False
    conn = pq.PGconn.connect(standby_url.encode())
    try:
        result = _run_read_only(conn, text)
    finally:
        conn.finish()
    assert result.status == pq.ExecStatus.TUPLES_OK, (result.error_message or b"").decode()
