"""The ``pgfast`` command: throwaway PostgreSQL servers for development and CI.

    eval "$(pgfast up --replicas 2)"   # start, export DATABASE_URL / DATABASE_REPLICA_URLS
    pgfast down                        # stop everything `pgfast up` started
    pgfast run --replicas 2 -- pytest  # start, run the command, always stop

Servers left running by ``pgfast up`` are recorded in a state file under a
per-user runtime dir (``$PGFAST_STATE_DIR``, else ``$XDG_RUNTIME_DIR/pgfast``,
else ``<tmp>/pgfast-<uid>``) so that ``pgfast down`` can find them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from . import _bench, _check
from .testing._local import ClusterError, LocalCluster, stop_from_state

Configure = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]

STATE_FILE = "clusters.jsonl"


def state_dir() -> Path:
    """The per-user directory holding the state of clusters left running by ``up``."""
    explicit = os.environ.get("PGFAST_STATE_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "pgfast"
    return Path(tempfile.gettempdir()) / f"pgfast-{os.getuid()}"


def _state_file() -> Path:
    directory = state_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # In a shared /tmp, refuse a directory someone else created for us.
    if directory.stat().st_uid != os.getuid():
        raise ClusterError(f"state dir {directory} is not owned by the current user")
    return directory / STATE_FILE


def _add_replicas(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replicas", type=int, default=0, metavar="N", help="streaming replicas (default 0)"
    )


def _cluster_env(cluster: LocalCluster) -> dict[str, str | None]:
    """DATABASE_URL and DATABASE_REPLICA_URLS (None: unset when there are no replicas)."""
    replicas = ",".join(cluster.replica_urls) or None
    return {"DATABASE_URL": cluster.primary_url, "DATABASE_REPLICA_URLS": replicas}


def _up(args: argparse.Namespace) -> int:
    state = _state_file()
    cluster = LocalCluster(replicas=args.replicas).start()
    try:
        env = _cluster_env(cluster)
        with state.open("a") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(cluster.detach() + "\n")
    except BaseException:
        cluster.stop()
        raise
    for name, value in env.items():
        print(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
    print("# stop with: pgfast down", file=sys.stderr)
    return 0


def _down(args: argparse.Namespace) -> int:
    state = _state_file()
    if not state.exists():
        print("pgfast down: nothing to stop", file=sys.stderr)
        return 0
    failed = 0
    for line in state.read_text().splitlines():
        if not line.strip():
            continue
        try:
            stop_from_state(line)
        except (ClusterError, OSError, ValueError, KeyError) as exc:
            failed += 1
            print(f"pgfast down: {exc}", file=sys.stderr)
    state.unlink()
    return 1 if failed else 0


def _configure_run(parser: argparse.ArgumentParser) -> None:
    _add_replicas(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind through the `with LocalCluster` so the servers are stopped.
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace) -> int:
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("pgfast run: no command given (usage: pgfast run -- CMD ...)", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with LocalCluster(replicas=args.replicas) as cluster:
            env = dict(os.environ)
            for name, value in _cluster_env(cluster).items():
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = value
            try:
                code = subprocess.call(cmd, env=env)
            except FileNotFoundError:
                print(f"pgfast run: command not found: {cmd[0]}", file=sys.stderr)
                return 127
            except KeyboardInterrupt:
                return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    # A child killed by a signal exits like a shell reports it: 128 + signal number.
    return 128 - code if code < 0 else code


# Subcommand -> (help, configure its parser, handler returning the exit code).
COMMANDS: dict[str, tuple[str, Configure, Handler]] = {
    "up": ("start a throwaway cluster, print its URLs, leave it running", _add_replicas, _up),
    "down": ("stop every cluster started by `pgfast up`", lambda parser: None, _down),
    "run": ("run a command against a throwaway cluster, then stop it", _configure_run, _run),
    "check": (_check.HELP, _check.configure_parser, _check.handler),
    "bench": (_bench.HELP, _bench.configure_parser, _bench.handler),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``pgfast`` argument parser, one subparser per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="pgfast", description="pgfast: throwaway servers, server checks, benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        configure(sub_parser)
        sub_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgfast`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "replicas", 0) < 0:
        print("pgfast: --replicas must be >= 0", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except ClusterError as exc:
        print(f"pgfast {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
