"""``pgfast bench``: the table and JSON against a real server, the throwaway path, errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import pgfast
from pgfast import _bench

ROOT = Path(__file__).parent.parent
CASES = {
    "sequential": "sequential round trips (sync)",
    "concurrent_10": "10 concurrent tasks (async)",
    "concurrent_100": "100 concurrent tasks (async)",
    "fetch_10k": "fetch 10,000 rows x 4 cols, dicts (sync)",
}


# Drives the same parser and handler as `pgfast bench` while the command is not
# yet registered in cli.COMMANDS.
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _bench.configure_parser(parser)
    return parser.parse_args(argv)


def bench_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "pgfast", "bench", *argv]


def number(text: str) -> float:
    return float(text.replace(",", ""))


def server_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}"


# --- no server ---------------------------------------------------------------------


@pytest.mark.nodb
@pytest.mark.parametrize("bad", ["0", "-1", "abc", "inf", "nan"])
def test_duration_must_be_positive_seconds(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--duration", bad)
    assert "--duration" in capsys.readouterr().err


@pytest.mark.nodb
def test_defaults() -> None:
    args = parse()
    assert (args.duration, args.json, args.url) == (_bench.DEFAULT_DURATION, False, None)


@pytest.mark.nodb
def test_address_hides_the_password() -> None:
    url = "postgresql://app:s3cret@db.example:6543/shop"
    assert _bench.address(url) == "db.example:6543/shop"


@pytest.mark.nodb
def test_ratio_is_pgfast_over_psycopg() -> None:
    result = _bench.CaseResult("x", "x", pgfast_ops=300.0, psycopg_ops=200.0)
    assert result.ratio == 1.5


@pytest.mark.nodb
def test_unusable_connection_string(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench.handler(parse("--url", "host=h password=s3cret dbname")) == 2
    err = capsys.readouterr().err
    assert "invalid connection string" in err and "s3cret" not in err


# --- a real server -----------------------------------------------------------------


def check_table(out: str, pg_url: str) -> None:
    header, *_ = out.splitlines()
    assert server_of(pg_url) in header
    password = urlsplit(pg_url).password
    assert not password or password not in out
    for title in CASES.values():
        line = next(line for line in out.splitlines() if line.startswith(title))
        pgfast_ops, psycopg_ops, ratio = line[len(title) :].split()
        assert number(pgfast_ops) > 0 and number(psycopg_ops) > 0
        # The table rounds ops/s to whole numbers and the ratio to two decimals:
        # the printed ratio lies within what the rounded rates allow.
        assert ratio.endswith("x")
        mine, theirs = number(pgfast_ops), number(psycopg_ops)
        lowest = max(mine - 0.5, 0.0) / (theirs + 0.5)
        highest = (mine + 0.5) / max(theirs - 0.5, 0.5)
        assert lowest - 0.005 <= float(ratio[:-1]) <= highest + 0.005


def test_table(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench.handler(parse("--url", pg_url, "--duration", "0.1")) == 0
    out, err = capsys.readouterr()
    check_table(out, pg_url)
    # Progress goes to stderr, one line before and one after each case.
    assert len(re.findall(r"^pgfast bench: \[\d/4\]", err, re.M)) == 8


def test_json_from_database_url(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    assert _bench.handler(parse("--json", "--duration", "0.1")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["server"] == server_of(pg_url)
    assert data["impl"] == pgfast.__impl__ and data["duration"] == 0.1
    assert {c["name"]: c["title"] for c in data["cases"]} == CASES
    for case in data["cases"]:
        assert case["pgfast_ops"] > 0 and case["psycopg_ops"] > 0
        assert case["ratio"] == case["pgfast_ops"] / case["psycopg_ops"]


def test_url_overrides_database_url(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:x@127.0.0.1:1/none")
    assert _bench.handler(parse("--url", pg_url, "--json", "--duration", "0.05")) == 0
    assert json.loads(capsys.readouterr().out)["server"] == server_of(pg_url)


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app:s3cret@127.0.0.1:1/shop"
    assert _bench.handler(parse("--url", url, "--duration", "0.1")) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "cannot connect to 127.0.0.1:1/shop" in err and "s3cret" not in err


# --- the throwaway server ----------------------------------------------------------


def without_database_url() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    return env


def assert_no_server_left(err: str) -> None:
    match = re.search(r"throwaway server running in (\S+)", err)
    assert match, err
    directory = match.group(1)
    assert not Path(directory).exists()
    leftovers: list[str] = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if directory.encode() in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:
            continue
    assert leftovers == []


def test_throwaway_server_is_started_and_stopped() -> None:
    proc = subprocess.run(
        bench_command("--duration", "0.2"),
        env=without_database_url(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(title in proc.stdout for title in CASES.values())
    assert "throwaway server stopped" in proc.stderr
    assert_no_server_left(proc.stderr)
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        # Kept on separate CPUs, so that where backends land does not decide the ratios.
        assert re.search(r"^client on CPU \d+, server on CPU [\d,]+$", proc.stdout, re.M)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_bench_stops_the_server(signum: int, code: int) -> None:
    proc = subprocess.Popen(
        bench_command("--duration", "60"),
        env=without_database_url(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        # Interrupt in the middle of the measurements, with every pool open.
        while not (seen and seen[-1].startswith("pgfast bench: [1/4]")):
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signum)
        out, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, "".join(seen) + rest
    assert out == ""
    assert "throwaway server stopped" in rest
    assert_no_server_left("".join(seen) + rest)
