"""Typical sync user code: must type-check under mypy --strict."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from typing import Any

from typing_extensions import LiteralString, assert_type

import pgfast
from pgfast import IsolationLevel, SQLQuery, sql


def by_id(table: LiteralString, user_id: int) -> SQLQuery:
    return sql("SELECT * FROM {} WHERE id = {}", sql.ident(table), user_id)


def search(name: str | None, limit: int) -> SQLQuery:
    conditions = [sql("TRUE")]
    if name is not None:
        conditions.append(sql("name ILIKE {}", f"%{name}%"))
    return sql("SELECT * FROM users WHERE {} LIMIT {}", sql.join(conditions, " AND "), limit)


def transfer(amount: Decimal) -> Any:
    def run(tx: pgfast.Transaction) -> Decimal:
        tx.execute(sql("UPDATE acct SET bal = bal - {} WHERE id = {}", amount, 1))
        tx.add_post_commit_step(lambda: print("moved", amount))
        if not tx.try_advisory_lock(42):
            raise RuntimeError("busy")
        return amount

    return run


def sign_up(db: pgfast.ConnectionPool, email: str) -> bool:
    try:
        db.execute(sql("INSERT INTO users (email) VALUES ({})", email))
    except pgfast.errors.UniqueViolation as exc:
        print(exc.sqlstate, exc.diag.constraint_name)
        return False
    except pgfast.errors.Error as exc:  # pgfast's own errors
        assert_type(exc, pgfast.Error)
        raise
    return True


def main() -> None:
    db: pgfast.ConnectionPool = pgfast.create_pool(pool_size=5, statement_timeout=30.0)
    with db:
        rows: list[dict[str, Any]] = db.query(by_id("users", 1))
        one = db.query_one(search("ada", 10))
        count: int = db.query_value(sql("SELECT count(*) FROM users"))
        assert_type(db.execute(sql("DELETE FROM users WHERE id = {}", 1)), int)
        results = db.query([sql("SELECT 1"), sql("SELECT 2")])
        print(rows, one, count, results, db.stats()["queries"])

        def move(tx: pgfast.Transaction) -> Decimal:
            return Decimal(tx.query_value(sql("SELECT 1")))

        assert_type(db.tx(move, isolation_level=IsolationLevel.SERIALIZABLE), Decimal)
        assert_type(
            db.tx(move, isolation_level="repeatable read", retry_serialization_failures=3), Decimal
        )
        with db.transaction(read_only=True) as tx:
            assert_type(tx.execute(sql("SELECT 1")), int)
            tx.advisory_lock((1, 2))
        with db.connection() as conn:
            conn.execute(sql("SET LOCAL work_mem = '64MB'"))
        stream: Iterator[Any] = db.query_stream(sql("SELECT * FROM big"), batch_size=500)
        with closing(db.query_stream(sql("SELECT * FROM big"))) as rows_iter:
            for row in rows_iter:
                print(row)
        print(stream, pgfast.is_sql_query(search(None, 1)), pgfast.__impl__)
