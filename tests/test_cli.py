"""The ``pgfast`` command: up / down / run against real throwaway servers."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from test_testing import alive, assert_gone, cluster_pids, postmaster_pids

from pgfast import cli

PGFAST = [sys.executable, "-m", "pgfast.cli"]
ROOT = Path(__file__).parent.parent


def pgfast(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGFAST_STATE_DIR": str(state_dir)}
    env.pop("DATABASE_URL", None)
    env.pop("DATABASE_REPLICA_URLS", None)
    return subprocess.run(
        [*PGFAST, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def select_one(url: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return row[0]


# --- parsing, no server -----------------------------------------------------------


@pytest.mark.nodb
def test_subcommands_come_from_one_table() -> None:
    assert set(cli.COMMANDS) == {"up", "down", "run", "check", "bench"}
    help_text = cli.build_parser().format_help()
    for name, (summary, _, _) in cli.COMMANDS.items():
        assert name in help_text and summary in help_text


@pytest.mark.nodb
def test_run_without_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--"]) == 2
    assert "no command given" in capsys.readouterr().err


@pytest.mark.nodb
def test_negative_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--replicas", "-1"]) == 2
    assert "--replicas" in capsys.readouterr().err


@pytest.mark.nodb
def test_unknown_subcommand() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["sideways"])
    assert info.value.code == 2


@pytest.mark.nodb
def test_down_with_nothing_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PGFAST_STATE_DIR", str(tmp_path))
    assert cli.main(["down"]) == 0
    assert "nothing to stop" in capsys.readouterr().err


@pytest.mark.nodb
def test_state_dir_must_be_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    monkeypatch.setenv("PGFAST_STATE_DIR", str(tmp_path))
    assert cli.main(["down"]) == 1


# --- against real servers -----------------------------------------------------------


def test_run_exports_urls_and_returns_the_exit_code(tmp_path: Path) -> None:
    script = (
        "import os, json, psycopg\n"
        "urls = [os.environ['DATABASE_URL'], *os.environ['DATABASE_REPLICA_URLS'].split(',')]\n"
        "roles = [psycopg.connect(u).execute('SELECT pg_is_in_recovery()').fetchone()[0]"
        " for u in urls]\n"
        "print(json.dumps(roles))\n"
        "raise SystemExit(3)\n"
    )
    result = pgfast(
        "run", "--replicas", "1", "--", sys.executable, "-c", script, state_dir=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout) == [False, True]


def test_console_script_run_without_replicas(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "pgfast"
    check = (
        "import os; assert 'DATABASE_REPLICA_URLS' not in os.environ;"
        " print(os.environ['DATABASE_URL'])"
    )
    env = {**os.environ, "DATABASE_REPLICA_URLS": "stale"}
    result = subprocess.run(
        [str(script), "run", sys.executable, "-c", check],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("postgresql://")
    with pytest.raises(psycopg.OperationalError):  # torn down on the way out
        psycopg.connect(url, connect_timeout=2)


def test_run_reports_a_signalled_command_like_a_shell(tmp_path: Path) -> None:
    result = pgfast("run", "--", "sh", "-c", "kill -9 $$", state_dir=tmp_path)
    assert result.returncode == 128 + signal.SIGKILL


def test_run_tears_down_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PGFAST_STATE_DIR": str(tmp_path)}
    wait = "import os, time; print(os.environ['DATABASE_URL'], flush=True); time.sleep(120)"
    with subprocess.Popen(
        [*PGFAST, "run", "--", sys.executable, "-c", wait],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert select_one(url) is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_up_then_down_leaves_nothing_running(tmp_path: Path) -> None:
    up = pgfast("up", "--replicas", "1", state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.strip().splitlines()
        )
        env = {name: shlex.split(value)[0] for name, value in exports.items()}
        assert select_one(env["DATABASE_URL"]) is False
        assert select_one(env["DATABASE_REPLICA_URLS"]) is True

        (state,) = (tmp_path / cli.STATE_FILE).read_text().splitlines()
        password = urlsplit(env["DATABASE_URL"]).password
        assert password and password not in state
        directory = Path(json.loads(state)["root"])
        pids = cluster_pids(directory)
        # Short-lived children may already be gone; the postmasters must be running.
        postmasters = postmaster_pids(directory)
        assert len(postmasters) == 2 and all(alive(p) for p in postmasters)
        assert len(pids) >= 6

        down = pgfast("down", state_dir=tmp_path)
        assert down.returncode == 0, down.stderr
        assert_gone(directory, pids)
        assert not (tmp_path / cli.STATE_FILE).exists()
    finally:
        # up leaves its servers running by design; a failed assertion must not.
        if (tmp_path / cli.STATE_FILE).exists():
            pgfast("down", state_dir=tmp_path)
