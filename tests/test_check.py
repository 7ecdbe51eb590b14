"""``pgfast check`` against the shared primary + 2 replicas, called in-process."""

from __future__ import annotations

import argparse
import io
import re
import socket

import pytest

from pgfast._check import check, check_node, configure_parser, default_urls, handler
from pgfast.testing import LocalCluster


def password_of(url: str) -> str:
    match = re.search(r"://[^:]+:([^@]+)@", url)
    assert match is not None
    return match.group(1)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_roles_versions_and_lag(pg_cluster: LocalCluster) -> None:
    primary = check_node(pg_cluster.primary_url)
    assert primary.error is None and primary.role == "primary"
    assert primary.version and primary.version[0].isdigit()
    assert primary.streaming_replicas == 2
    pg_cluster.wait_for_replicas()
    for url in pg_cluster.replica_urls:
        replica = check_node(url)
        assert replica.role == "standby" and replica.lag == 0
        assert replica.replay_lsn and "/" in replica.replay_lsn


def test_output_never_shows_passwords(
    pg_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    down = pg_cluster.primary_url.rsplit(":", 1)[0] + f":{free_port()}/postgres"
    code = handler(parse([pg_cluster.primary_url, *pg_cluster.replica_urls, down]))
    out = capsys.readouterr().out
    assert code == 1  # one server is down
    lines = out.splitlines()
    assert len(lines) == 4
    assert "primary, WAL at" in lines[0] and "2 streaming replicas" in lines[0]
    assert all("standby" in line and "lag" in line for line in lines[1:3])
    assert all("WAL receiver streaming" in line for line in lines[1:3])
    assert "DOWN" in lines[3]
    assert password_of(pg_cluster.primary_url) not in out


def test_urls_default_to_the_environment(
    pg_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_cluster.primary_url)
    monkeypatch.setenv("DATABASE_REPLICA_URLS", ",".join(pg_cluster.replica_urls))
    assert default_urls() == [pg_cluster.primary_url, *pg_cluster.replica_urls]
    assert handler(parse([])) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    out = io.StringIO()
    assert check([pg_cluster.replica_urls[0]], out) == 0
    assert "standby" in out.getvalue()


@pytest.mark.nodb
def test_no_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_REPLICA_URLS", raising=False)
    assert handler(parse([])) == 2
    assert "set DATABASE_URL" in capsys.readouterr().err
    assert handler(parse(["postgresql://a:secret@[bad"])) == 2
    assert "secret" not in capsys.readouterr().err
