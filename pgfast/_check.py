"""``pgfast check [URL...]``: version, role and replication lag of each server.

URLs default to ``$DATABASE_URL`` and the comma-separated
``$DATABASE_REPLICA_URLS``. Passwords are never printed. Roles are what each
server says it is, whatever the order of the URLs, and as a cluster would use
it: of several servers accepting writes (after a promotion, before the old
primary was stopped) only the one on the highest timeline is the primary.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import TextIO

import psycopg

from ._cluster_common import choose_primary
from ._config import resolve_config
from ._exceptions import ConfigurationError

HELP = "show the version, role and replication lag of each server"
# A server out of recovery: its WAL position, its standbys, whether it refuses
# writes (default_transaction_read_only) and the timeline it writes on (from
# its current WAL file's name: exact even right after a promotion).
PRIMARY_SQL = """\
SELECT pg_current_wal_lsn()::text,
       (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'),
       current_setting('transaction_read_only') = 'on',
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"""
CHECK_TIMEOUT = 5
# A standby on its own: replay position, WAL receiver status, and lag in seconds.
# Without the primary's position, "replayed all it received" counts as caught up
# only while the receiver streams: a stalled receiver makes the lag unknown.
STANDBY_SQL = """\
SELECT pg_last_wal_replay_lsn()::text,
       r.status,
       CASE
         WHEN r.status IS DISTINCT FROM 'streaming' THEN NULL
         WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0
         ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END
FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true"""


@dataclass(frozen=True)
class NodeReport:
    """What ``check`` found out about one server (``error`` set when unreachable)."""

    display: str
    version: str | None = None
    role: str | None = None  # "primary" or "standby"
    lag: float | None = None  # standby: seconds behind; None when unknown
    replay_lsn: str | None = None  # standby: WAL replayed; primary: WAL written
    receiver: str | None = None  # standby: WAL receiver status, None when it has none
    streaming_replicas: int | None = None  # primary: standbys connected to it
    timeline: int | None = None  # primary: the timeline it writes on
    read_only: bool = False  # primary: refuses writes (default_transaction_read_only)
    superseded: bool = False  # primary: another one is on a higher timeline
    error: str | None = None

    @property
    def writable(self) -> bool:
        return self.error is None and self.role == "primary" and not self.read_only

    def line(self) -> str:
        if self.error is not None:
            return f"{self.display}: DOWN ({self.error})"
        text = f"{self.display}: PostgreSQL {self.version}, {self.role}"
        if self.role == "primary":
            text += (
                f", WAL at {self.replay_lsn} (timeline {self.timeline}), "
                f"{self.streaming_replicas} streaming replicas"
            )
            if self.read_only:
                text += "; READ-ONLY (default_transaction_read_only): no writes"
            elif self.superseded:
                text += (
                    "; SUPERSEDED: another primary is on a higher timeline "
                    "(a cluster sends this one nothing)"
                )
            return text
        lag = "unknown" if self.lag is None else f"{self.lag:.3f} s"
        receiver = self.receiver or "none"
        return f"{text}, replayed {self.replay_lsn}, WAL receiver {receiver}, lag {lag}"


def default_urls() -> list[str]:
    """``$DATABASE_URL`` then each of ``$DATABASE_REPLICA_URLS``."""
    urls = [os.environ.get("DATABASE_URL", "")]
    urls += os.environ.get("DATABASE_REPLICA_URLS", "").split(",")
    return [u.strip() for u in urls if u.strip()]


def check_node(url: str) -> NodeReport:
    """Connect to ``url`` and report on it; a failure is a report, not an exception."""
    config = resolve_config(url, {"connect_timeout": CHECK_TIMEOUT}, "check")
    try:
        with psycopg.connect(config.conninfo, **config.connect_kwargs) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert version is not None and standby is not None
            if standby[0]:
                status = conn.execute(STANDBY_SQL).fetchone()
                assert status is not None
                return NodeReport(
                    config.display,
                    version[0],
                    "standby",
                    status[2],
                    replay_lsn=status[0],
                    receiver=status[1],
                )
            primary = conn.execute(PRIMARY_SQL).fetchone()
            assert primary is not None
            return NodeReport(
                config.display,
                version[0],
                "primary",
                replay_lsn=primary[0],
                streaming_replicas=primary[1],
                read_only=primary[2],
                timeline=primary[3],
            )
    except psycopg.Error as exc:
        return NodeReport(config.display, error=" ".join(config.redact(str(exc)).split()))


def elect(reports: list[NodeReport]) -> list[NodeReport]:
    """``reports`` with every writable primary but the one a cluster would use
    (the highest timeline, then the first given) marked ``superseded``."""
    writable = {i: r.timeline or 0 for i, r in enumerate(reports) if r.writable}
    if len(writable) < 2:
        return reports
    chosen = choose_primary(writable, 0)  # a tie goes to the first given, as in a cluster
    return [
        replace(r, superseded=True) if i in writable and i != chosen else r
        for i, r in enumerate(reports)
    ]


def check(urls: list[str], out: TextIO | None = None) -> int:
    """Print one line per server (to stdout by default); the exit code is 1 when any is
    down or more than one accepts writes."""
    reports = elect([check_node(url) for url in urls])
    for report in reports:
        print(report.line(), file=out or sys.stdout)
    trouble = any(r.error is not None or r.superseded for r in reports)
    return 1 if trouble else 0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="servers to check (default: $DATABASE_URL and $DATABASE_REPLICA_URLS)",
    )


def handler(args: argparse.Namespace) -> int:
    urls: list[str] = args.urls or default_urls()
    if not urls:
        print(
            "pgfast check: no server given: pass URLs or set DATABASE_URL "
            "(and DATABASE_REPLICA_URLS)",
            file=sys.stderr,
        )
        return 2
    try:
        return check(urls)
    except ConfigurationError as exc:
        print(f"pgfast check: {exc}", file=sys.stderr)
        return 2
