"""Read/write classifier of SQL text: the pure-Python twin of ``pgfast._classify_c``.

``is_read_only(text)`` lexes the text as PostgreSQL's lexer would (comments,
nested block comments, string, bit-string and dollar-quoted literals, quoted
identifiers, ``$n`` parameters, ``;``-separated statements) and answers True
only when every statement provably cannot write, lock or leave session side
effects. Anything it cannot prove read-only is False, including text it
cannot lex the way every server would: an unterminated literal or comment,
a NUL, ``\\'`` in a standard string (its meaning depends on
``standard_conforming_strings``) and ``U&"..."`` identifiers (their escapes
can spell any function name).

Both twins share this algorithm step for step; only the compiled one reads
the characters from the str's buffer instead of indexing it.
"""

from __future__ import annotations

__all__ = ["WRITE_FUNCTIONS", "WRITE_FUNCTION_PREFIXES", "is_read_only"]

#: Functions that write, lock, have session side effects, run SQL given as
#: text (whatever it does) or run only on a primary. A call (name followed by
#: ``(``) to one makes a statement a write.
#: Unquoted names are matched after ASCII lower-casing, quoted ones exactly.
WRITE_FUNCTIONS: frozenset[str] = frozenset(
    {
        # sequences and transaction ids
        "nextval", "setval", "currval", "lastval",
        "txid_current", "pg_current_xact_id",
        # session state and notifications
        "set_config", "setseed", "pg_notify", "pg_export_snapshot",
        # large objects (the rest are the lo_* prefix)
        "lowrite",
        # WAL, backups, recovery control, replication slots
        "pg_switch_wal", "pg_switch_xlog", "pg_walfile_name", "pg_walfile_name_offset",
        "pg_promote", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
        "pg_stop_backup", "pg_drop_replication_slot", "pg_replication_slot_advance",
        "pg_sync_replication_slots", "pg_log_standby_snapshot",
        # server signalling
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
        "pg_log_backend_memory_contexts",
        # catalog, statistics and index maintenance
        "pg_import_system_collations", "pg_extension_config_dump", "pg_nextoid",
        "pg_truncate_visibility_map", "gin_clean_pending_list", "pg_stat_statements_reset",
        "pg_set_relation_stats", "pg_clear_relation_stats", "pg_restore_relation_stats",
        "pg_set_attribute_stats", "pg_clear_attribute_stats", "pg_restore_attribute_stats",
        # run SQL given as text, which may lock or change session state even on a
        # standby (ts_rewrite: only its (tsquery, text) form does, all go here)
        "ts_stat", "ts_rewrite",
        "connectby", "xpath_table",  # tablefunc, xml2
        # amcheck: its ShareLock is refused during recovery (bt_index_check only reads)
        "bt_index_parent_check",
    }
)  # fmt: skip

#: Name prefixes of whole families of such functions.
WRITE_FUNCTION_PREFIXES: tuple[str, ...] = (
    "pg_advisory_",  # pg_advisory_lock*, pg_advisory_xact_lock*, pg_advisory_unlock*
    "pg_try_advisory_",
    "lo_",  # lo_create, lo_import, lo_export, lo_unlink, lo_put, lo_from_bytea, ...
    "pg_logical_",  # pg_logical_emit_message, pg_logical_slot_get_changes, ...
    "pg_create_",  # pg_create_restore_point, pg_create_*_replication_slot
    "pg_copy_",  # pg_copy_*_replication_slot
    "pg_replication_origin_",
    "pg_stat_reset",
    "pg_wal_replay_",  # pg_wal_replay_pause / _resume / _wait
    "pg_current_wal_",  # fail on a standby: "recovery is in progress"
    "pg_rotate_logfile",
    "pg_file_",  # adminpack: pg_file_write, pg_file_unlink, ...
    "brin_summarize_",
    "brin_desummarize_",
    "dblink",  # runs arbitrary SQL elsewhere, holds named connections
    "query_to_xml",  # query_to_xml, query_to_xmlschema, query_to_xml_and_xmlschema: run SQL text
    "cursor_to_xml",  # cursor_to_xml, cursor_to_xmlschema: fetch from a cursor
    "crosstab",  # tablefunc's crosstab, crosstab2/3/4: run SQL text
    "heap_force_",  # pg_surgery: heap_force_kill, heap_force_freeze
)

# Token kinds. Unquoted words are _WORD or, from _SELECT on, a keyword.
_OTHER = 0  # operator, punctuation, number, parameter, string literal
_LPAREN = 1
_RPAREN = 2
_SEMI = 3
_QUOTED = 4  # "quoted identifier": never a keyword
_WORD = 5
_SELECT = 6
_WITH = 7
_VALUES = 8
_TABLE = 9
_SHOW = 10
_EXPLAIN = 11
_ANALYZE = 12  # ANALYZE / ANALYSE / VERBOSE: EXPLAIN's old-style options
_FOR = 13
_LOCK_WORD = 14  # SHARE / KEY / NO right after FOR: a row-locking clause
_WRITE = 15  # INSERT / UPDATE / DELETE / MERGE / INTO (SELECT ... INTO)

_KEYWORDS: dict[str, int] = {
    "select": _SELECT, "with": _WITH, "values": _VALUES, "table": _TABLE,
    "show": _SHOW, "explain": _EXPLAIN, "analyze": _ANALYZE, "analyse": _ANALYZE,
    "verbose": _ANALYZE, "for": _FOR, "share": _LOCK_WORD, "key": _LOCK_WORD,
    "no": _LOCK_WORD, "insert": _WRITE, "update": _WRITE, "delete": _WRITE,
    "merge": _WRITE, "into": _WRITE,
}  # fmt: skip

# Phases of one statement.
_EMPTY = 0  # no token yet
_OPEN = 1  # only "(" so far
_AFTER_EXPLAIN = 2  # EXPLAIN: "(" opens its option list
_EXPLAIN_KW = 3  # EXPLAIN ANALYZE / VERBOSE
_EXPLAIN_OPTS = 4  # inside EXPLAIN ( ... )
_EXPLAINED = 5  # the explained statement must start now
_BODY = 6  # a read statement is under way

_SPACE = " \t\n\r\f\v"
_DIGITS = "0123456789"
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _ident_start(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z" or c == "_" or c >= "\x80"


def _ident_cont(c: str) -> bool:
    return _ident_start(c) or "0" <= c <= "9" or c == "$"


def _skip_block_comment(text: str, i: int, n: int) -> int:
    """End of the (possibly nested) block comment opened at ``i``, or -1."""
    depth = 1
    i += 2
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            depth += 1
            i += 2
        elif c == "*" and i + 1 < n and text[i + 1] == "/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _skip_quoted(text: str, i: int, n: int, quote: str, backslash: bool) -> int:
    """End of the literal or identifier whose opening ``quote`` is at ``i``, or -1.

    ``backslash``: backslash escapes the next character (``E''`` strings).
    Without it, ``\\'`` inside a string is ambiguous (it depends on the
    server's ``standard_conforming_strings``), so it also gives -1.
    """
    i += 1
    while i < n:
        c = text[i]
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        if c == "\\" and quote == "'":
            if backslash:
                i += 1
            elif i + 1 < n and text[i + 1] == "'":
                return -1
        i += 1
    return -1


def _skip_dollar(text: str, i: int, n: int) -> int:
    """End of the ``$n`` parameter or ``$tag$...$tag$`` literal at ``i``, or -1."""
    j = i + 1
    if j < n and "0" <= text[j] <= "9":
        while j < n and "0" <= text[j] <= "9":
            j += 1
        return j
    if j < n and _ident_start(text[j]):
        j += 1
        while j < n and _ident_cont(text[j]) and text[j] != "$":
            j += 1
    if j >= n or text[j] != "$":
        return -1
    end = text.find(text[i : j + 1], j + 1)
    return -1 if end < 0 else end + j + 1 - i


def _writes(name: str) -> bool:
    return name in WRITE_FUNCTIONS or name.startswith(WRITE_FUNCTION_PREFIXES)


def _starts_read(kind: int) -> bool:
    return kind in (_SELECT, _WITH, _VALUES, _TABLE)


def is_read_only(text: str) -> bool:
    """True when every statement of ``text`` provably cannot write or lock.

    A ``str`` subclass is read by its ``str`` value: its own methods are never used.
    """
    if type(text) is not str:
        # The real type decides, not a __class__ the object claims.
        if not issubclass(type(text), str):
            raise TypeError(
                f"is_read_only() takes the SQL text as a str, not {type(text).__name__}"
            )
        text = str.__str__(text)
    if "\x00" in text:  # libpq would cut the text there: what runs is unknown
        return False
    n = len(text)
    i = 0
    phase = _EMPTY
    depth = 0  # parentheses open in EXPLAIN's option list
    prev = _OTHER  # kind of the previous token of this statement
    name_start = name_end = 0  # span of the previous identifier token
    statements = 0
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "-" and nxt == "-":
            while i < n and text[i] != "\n" and text[i] != "\r":
                i += 1
            continue
        if c == "/" and nxt == "*":
            i = _skip_block_comment(text, i, n)
            if i < 0:
                return False
            continue

        start = i
        kind = _OTHER
        if _ident_start(c):
            if nxt == "'" and c in "eE":
                i = _skip_quoted(text, i + 1, n, "'", True)
            elif nxt == "'" and c in "bBxXnN":
                i = _skip_quoted(text, i + 1, n, "'", False)
            elif c in "uU" and nxt == "&" and i + 2 < n and text[i + 2] == "'":
                i = _skip_quoted(text, i + 2, n, "'", False)
            elif c in "uU" and nxt == "&" and i + 2 < n and text[i + 2] == '"':
                return False  # U&"..." [UESCAPE '.']: its escapes can spell any name
            else:
                i += 1
                while i < n and _ident_cont(text[i]):
                    i += 1
                word = text[start:i]
                kind = _KEYWORDS.get(word.lower(), _WORD) if word.isascii() else _WORD
        elif c == "'":
            i = _skip_quoted(text, i, n, "'", False)
        elif c == '"':
            i = _skip_quoted(text, i, n, '"', False)
            kind = _QUOTED
        elif c == "$":
            i = _skip_dollar(text, i, n)
        elif c in _DIGITS:
            while i < n and text[i] in _DIGITS:
                i += 1
        else:
            i += 1
            if c == "(":
                kind = _LPAREN
            elif c == ")":
                kind = _RPAREN
            elif c == ";":
                kind = _SEMI
        if i < 0:  # unterminated literal or identifier, or a stray "$"
            return False

        if kind == _SEMI:
            if phase == _BODY:
                statements += 1
            elif phase != _EMPTY:
                return False
            phase = _EMPTY
            kind = _OTHER
        elif kind == _LPAREN:
            if prev >= _WORD and _writes(text[name_start:name_end].translate(_ASCII_LOWER)):
                return False
            if prev == _QUOTED and _writes(text[name_start + 1 : name_end - 1]):
                return False
            if phase == _EMPTY:
                phase = _OPEN
            elif phase == _AFTER_EXPLAIN:
                phase = _EXPLAIN_OPTS
                depth = 1
            elif phase == _EXPLAIN_OPTS:
                depth += 1
            elif phase == _EXPLAIN_KW:
                phase = _EXPLAINED
        elif kind == _RPAREN:
            if phase == _EXPLAIN_OPTS:
                depth -= 1
                if depth == 0:
                    phase = _EXPLAINED
            elif phase != _BODY:
                return False
        elif kind >= _WORD:
            if kind == _WRITE or (kind == _LOCK_WORD and prev == _FOR):
                return False
            if phase in (_EMPTY, _OPEN):
                if _starts_read(kind) or kind == _SHOW:
                    phase = _BODY
                elif kind == _EXPLAIN:
                    phase = _AFTER_EXPLAIN
                else:
                    return False
            elif phase in (_AFTER_EXPLAIN, _EXPLAIN_KW):
                if kind == _ANALYZE:
                    phase = _EXPLAIN_KW
                elif _starts_read(kind):
                    phase = _BODY
                else:
                    return False
            elif phase == _EXPLAINED:
                if not _starts_read(kind):
                    return False
                phase = _BODY
        elif phase != _BODY and phase != _EXPLAIN_OPTS:
            return False
        if kind == _QUOTED or kind >= _WORD:
            name_start = start
            name_end = i
        prev = kind
    if phase == _BODY:
        statements += 1
    elif phase != _EMPTY:
        return False
    return statements > 0
