"""``pgfast bench``: pgfast vs raw psycopg on the same server, in one short run.

Peers follow the main table: asyncpg (when installed) and postgres.js (when
``node`` and ``benches/node``'s packages are there), on the async cases.

Against ``--url`` or ``$DATABASE_URL``, else a throwaway ``LocalCluster``
started and always stopped by the command. Each case runs the same workload
through a pgfast pool and through psycopg_pool + ``RawCursor`` with
``dict_row``: same pool sizes (10, all opened up front), same connection
settings (autocommit, psycopg's default ``prepare_threshold``), a warm-up,
then ``REPEATS`` alternating rounds per side; the median ops/s is reported.
Progress goes to stderr, the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import psycopg_pool
from psycopg import AsyncRawCursor, RawCursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from . import __version__
from ._config import PoolConfig, resolve_config
from ._exceptions import ConfigurationError, Error
from ._factories import create_async_pool, create_pool
from ._impl import IMPL
from ._sql import sql
from .testing import LocalCluster

HELP = "benchmark pgfast against raw psycopg"
POOL_SIZE = 10
REPEATS = 5
DEFAULT_DURATION = 2.0
CONNECT_TIMEOUT = 5
POOL_OPTIONS: dict[str, Any] = {
    "pool_size": POOL_SIZE,
    "min_size": POOL_SIZE,
    "connect_timeout": CONNECT_TIMEOUT,
    "application_name": "pgfast bench",
}
ROUND_TRIP = "SELECT $1::int AS a"
FETCH_ROWS = 10_000
FETCH = (
    "SELECT g AS id, g::text AS name, g * 1.5 AS score, now() AS at "
    f"FROM generate_series(1, {FETCH_ROWS}) g"
)

T = TypeVar("T")
# One side of a case: runs its workload for the given seconds, returns ops/s.
Rate = Callable[[float], float]
SyncOp = Callable[[int], list[Any]]
AsyncOp = Callable[[int], Awaitable[list[Any]]]


@dataclass(frozen=True)
class CaseResult:
    """The median throughput of one case for pgfast and for psycopg."""

    name: str
    title: str
    pgfast_ops: float
    psycopg_ops: float

    @property
    def ratio(self) -> float:
        """pgfast ops/s divided by psycopg ops/s (> 1: pgfast is faster)."""
        return self.pgfast_ops / self.psycopg_ops


@dataclass(frozen=True)
class PeerResult:
    """pgfast's async pool against other libraries on one workload (median ops/s)."""

    name: str
    title: str
    pgfast_ops: float
    peers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    pgfast: Rate
    psycopg: Rate
    # Run each side once and return a comparable summary (row count, columns).
    probe: Callable[[], tuple[Any, Any]]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"measured time per case and library (default {DEFAULT_DURATION:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--same-cpu",
        action="store_true",
        help="throwaway server only: pin it to the client's CPU (library CPU cost shows)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip asyncpg and postgres.js")
    parser.add_argument(
        "--url", help="server to benchmark (default: $DATABASE_URL, else a throwaway server)"
    )


def progress(message: str) -> None:
    print(f"pgfast bench: {message}", file=sys.stderr, flush=True)


def address(conninfo: str) -> str:
    """``host:port/dbname`` of a connection string (libpq defaults filled in), no secrets."""
    params = conninfo_to_dict(conninfo)

    def get(key: str, env: str, default: str) -> str:
        return str(params.get(key) or os.environ.get(env) or default)

    host = get("host", "PGHOST", "localhost")
    return f"{host}:{get('port', 'PGPORT', '5432')}/{get('dbname', 'PGDATABASE', '')}"


# --- timing ------------------------------------------------------------------------


def sync_rate(op: SyncOp) -> Rate:
    """Call ``op`` in a loop for the given seconds; ops/s."""

    def rate(seconds: float) -> float:
        done = 0
        start = now = perf_counter()
        deadline = start + seconds
        while now < deadline:
            op(done & 0xFFFF)
            done += 1
            now = perf_counter()
        return done / (now - start)

    return rate


class _Loop:
    """An event loop on which Ctrl-C (or SIGTERM) cancels the running coroutine.

    A signal raising in the middle of the loop would leave tasks pending with
    connections checked out; cancelling lets every task unwind and return its
    connection, then the signal is delivered again to its previous handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = self.loop.create_task(coro)
        if threading.current_thread() is not threading.main_thread():
            return self.loop.run_until_complete(task)
        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            self.loop.call_soon_threadsafe(task.cancel)

        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for signum, handler in previous.items():
            if handler not in (signal.SIG_IGN, None):
                signal.signal(signum, on_signal)
        try:
            return self.loop.run_until_complete(task)
        finally:
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
            if received:
                signal.raise_signal(received[0])


def async_rate(loop: _Loop, op: AsyncOp, tasks: int) -> Rate:
    """``tasks`` asyncio tasks each awaiting ``op`` in a loop for the given seconds; ops/s."""

    async def measure(seconds: float) -> float:
        start = perf_counter()
        deadline = start + seconds

        async def worker(n: int) -> int:
            done = 0
            while perf_counter() < deadline:
                await op((n * 1000 + done) & 0xFFFF)
                done += 1
            return done

        workers = [asyncio.ensure_future(worker(n)) for n in range(tasks)]
        try:
            totals = await asyncio.gather(*workers)
        finally:
            # One failed or the whole measurement was cancelled: stop the others.
            for w in workers:
                w.cancel()
            await asyncio.wait(workers)
        return sum(totals) / (perf_counter() - start)

    return lambda seconds: loop.run(measure(seconds))


def separate_cpus(cluster: LocalCluster) -> str | None:
    """Pin this process to one CPU and the throwaway ``cluster`` to the others.

    A round trip to a backend on the client's CPU took 24 µs, to one on the
    other CPU 109 µs (a 2-CPU VM): wherever the scheduler put each side's
    backends decided the ratios. Apart, every connection pays the same, as with
    a server on its own host. What was done, for the report; None where
    nothing can be (not Linux, one CPU, not permitted).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    try:
        cluster.set_cpu_affinity(cpus[1:])
        os.sched_setaffinity(0, cpus[:1])
    except OSError:
        return None
    server = ",".join(map(str, cpus[1:]))
    return f"client on CPU {cpus[0]}, server on CPU {server}"


def measure_case(case: Case, duration: float) -> CaseResult:
    """Warm up both sides, then alternate them ``REPEATS`` times; median ops/s of each."""
    ours, theirs = case.probe()
    if ours != theirs:
        raise Error(f"{case.title}: pgfast returned {ours!r} but psycopg {theirs!r}")
    warm_up = min(0.2, duration / 4)
    case.pgfast(warm_up)
    case.psycopg(warm_up)
    slice_ = duration / REPEATS
    pgfast_runs: list[float] = []
    psycopg_runs: list[float] = []
    for i in range(REPEATS):
        sides = [(case.pgfast, pgfast_runs), (case.psycopg, psycopg_runs)]
        # Alternate which side goes first so drift (caches, autovacuum, noisy
        # neighbours) does not always favour the same one.
        for rate, runs in sides if i % 2 == 0 else sides[::-1]:
            runs.append(rate(slice_))
    return CaseResult(
        case.name, case.title, statistics.median(pgfast_runs), statistics.median(psycopg_runs)
    )


# --- the workload ------------------------------------------------------------------


def _shape(rows: list[Any]) -> tuple[int, tuple[str, ...]]:
    return len(rows), tuple(rows[0]) if rows else ()


def _raw_fetch(cur: RawCursor[DictRow], query: str, params: list[int] | None) -> list[DictRow]:
    cur.execute(query, params)
    return cur.fetchall()


def run_cases(config: PoolConfig, duration: float) -> list[CaseResult]:
    """Open pgfast and psycopg pools of the same size on ``config`` and run every case."""
    results: list[CaseResult] = []
    with ExitStack() as stack:
        loop = _Loop()
        stack.callback(loop.loop.close)
        run = loop.run
        db = stack.enter_context(create_pool(config.conninfo, **POOL_OPTIONS))
        raw = stack.enter_context(
            psycopg_pool.ConnectionPool(
                config.conninfo,
                kwargs=dict(config.connect_kwargs),
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                open=False,
            )
        )
        raw.open(wait=True)
        adb = create_async_pool(config.conninfo, **POOL_OPTIONS)
        stack.callback(lambda: run(adb.dispose()))
        araw = psycopg_pool.AsyncConnectionPool(
            config.conninfo,
            kwargs=dict(config.connect_kwargs),
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            open=False,
        )
        run(araw.open(wait=True))
        stack.callback(lambda: run(araw.close()))

        def pgfast_select(i: int) -> list[Any]:
            rows: list[Any] = db.query(sql("SELECT {}::int AS a", i))
            return rows

        def raw_select(i: int) -> list[DictRow]:
            with raw.connection() as conn:
                return _raw_fetch(RawCursor(conn, row_factory=dict_row), ROUND_TRIP, [i])

        async def apgfast_select(i: int) -> list[Any]:
            rows: list[Any] = await adb.query(sql("SELECT {}::int AS a", i))
            return rows

        async def araw_select(i: int) -> list[DictRow]:
            async with araw.connection() as conn:
                cur = AsyncRawCursor(conn, row_factory=dict_row)
                await cur.execute(ROUND_TRIP, [i])
                return await cur.fetchall()

        fetch_query = sql(FETCH)

        def pgfast_fetch(i: int) -> list[Any]:
            rows: list[Any] = db.query(fetch_query)
            return rows

        def raw_fetch(i: int) -> list[DictRow]:
            with raw.connection() as conn:
                return _raw_fetch(RawCursor(conn, row_factory=dict_row), FETCH, None)

        def probe_sync(ours: SyncOp, theirs: SyncOp) -> Callable[[], tuple[Any, Any]]:
            return lambda: (_shape(ours(7)), _shape(theirs(7)))

        async def both_async() -> tuple[Any, Any]:
            return _shape(await apgfast_select(7)), _shape(await araw_select(7))

        cases = [
            Case(
                "sequential",
                "sequential round trips (sync)",
                sync_rate(pgfast_select),
                sync_rate(raw_select),
                probe_sync(pgfast_select, raw_select),
            ),
            *(
                Case(
                    f"concurrent_{tasks}",
                    f"{tasks} concurrent tasks (async)",
                    async_rate(loop, apgfast_select, tasks),
                    async_rate(loop, araw_select, tasks),
                    lambda: run(both_async()),
                )
                for tasks in (10, 100)
            ),
            Case(
                "fetch_10k",
                f"fetch {FETCH_ROWS:,} rows x 4 cols, dicts (sync)",
                sync_rate(pgfast_fetch),
                sync_rate(raw_fetch),
                probe_sync(pgfast_fetch, raw_fetch),
            ),
        ]
        for n, case in enumerate(cases, 1):
            progress(f"[{n}/{len(cases)}] {case.title} ...")
            result = measure_case(case, duration)
            progress(
                f"[{n}/{len(cases)}] {case.title}: pgfast {result.pgfast_ops:,.0f} ops/s, "
                f"psycopg {result.psycopg_ops:,.0f} ops/s ({result.ratio:.2f}x)"
            )
            results.append(result)
    return results


# --- peers: asyncpg and postgres.js --------------------------------------------------

NODE_DIR = Path(__file__).resolve().parent.parent / "benches" / "node"
PEER_SELECT = "SELECT $1::int AS a"
# name, title, tasks, pool size, rows per op
PEER_CASES = (
    ("sequential_async", "sequential round trips, one connection (async)", 1, 1, 1),
    ("concurrent_10", "10 concurrent tasks, pool of 10 (async)", 10, POOL_SIZE, 1),
    ("concurrent_100", "100 concurrent tasks, pool of 10 (async)", 100, POOL_SIZE, 1),
    ("fetch_10k", f"fetch {FETCH_ROWS:,} rows x 4 cols, rows/s (async)", 1, 1, FETCH_ROWS),
)


def _login(config: PoolConfig) -> dict[str, Any]:
    params = conninfo_to_dict(config.conninfo)
    params.update(config.connect_kwargs)
    return {
        "host": str(params.get("host") or os.environ.get("PGHOST") or "localhost"),
        "port": int(params.get("port") or os.environ.get("PGPORT") or 5432),
        "user": params.get("user") or os.environ.get("PGUSER"),
        "password": params.get("password") or os.environ.get("PGPASSWORD"),
        "database": params.get("dbname") or os.environ.get("PGDATABASE"),
    }


async def _arate(op: AsyncOp, tasks: int, seconds: float) -> float:
    start = perf_counter()
    deadline = start + seconds

    async def worker(n: int) -> int:
        done = 0
        while perf_counter() < deadline:
            await op((n * 1000 + done) & 0xFFFF)
            done += 1
        return done

    totals = await asyncio.gather(*(worker(n) for n in range(tasks)))
    return sum(totals) / (perf_counter() - start)


def settle_malloc() -> None:
    """Put the C allocator in the state of a long-running process.

    glibc serves a large allocation with mmap until a freed one raises its
    mmap threshold. asyncpg makes such an allocation per query: in a process
    that never freed a large block it pays an mmap and a munmap per query and
    runs about 1.5x slower than in any process that did (a service has,
    long before its first query). The Python libraries, pgfast included,
    are measured in the latter (postgres.js runs in a Node process of its own).
    """
    block = bytearray(1 << 20)
    del block


async def _peer_rates(config: PoolConfig, duration: float) -> list[PeerResult]:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        asyncpg = None
    login = _login(config)
    slice_ = duration / REPEATS
    results: list[PeerResult] = []
    for name, title, tasks, size, rows in PEER_CASES:
        progress(f"[peers] {title} ...")
        options = dict(POOL_OPTIONS, pool_size=size, min_size=size)
        fetch = rows > 1
        query = sql(FETCH) if fetch else None
        async with create_async_pool(config.conninfo, **options) as db:

            async def ours(i: int, db: Any = db, query: Any = query) -> list[Any]:
                if query is not None:
                    return list(await db.query(query))
                return list(await db.query(sql("SELECT {}::int AS a", i)))

            sides: list[tuple[str, AsyncOp]] = [("pgfast", ours)]
            theirs: Any = None
            if asyncpg is not None:
                # One connection: asyncpg's own (its pool resets a connection,
                # one more round trip, at every release); else its pool.
                if size == 1:
                    theirs = await asyncpg.connect(**login)
                else:
                    theirs = await asyncpg.create_pool(min_size=size, max_size=size, **login)

                async def peer(i: int, pool: Any = theirs, fetch: bool = fetch) -> list[Any]:
                    if fetch:
                        return list(await pool.fetch(FETCH))
                    return list(await pool.fetch(PEER_SELECT, i))

                sides.append(("asyncpg", peer))
            try:
                runs: dict[str, list[float]] = {side: [] for side, _ in sides}
                for _, op in sides:
                    await _arate(op, tasks, min(0.2, duration / 4))
                for i in range(REPEATS):
                    for side, op in sides if i % 2 == 0 else sides[::-1]:
                        runs[side].append(await _arate(op, tasks, slice_) * rows)
            finally:
                if theirs is not None:
                    await theirs.close()
        medians = {side: statistics.median(values) for side, values in runs.items()}
        node = _postgresjs(login, name, duration)
        if node is not None:
            medians["postgres.js"] = node
        ops = medians.pop("pgfast")
        results.append(PeerResult(name, title, ops, medians))
        shown = ", ".join(f"{peer} {value:,.0f}" for peer, value in medians.items())
        progress(f"[peers] {title}: pgfast {ops:,.0f}; {shown or 'no peer installed'}")
    return results


def _postgresjs(login: dict[str, Any], name: str, duration: float) -> float | None:
    """postgres.js's median ops/s on case ``name``; None without node or the package."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "postgres").is_dir():
        return None
    user = quote(str(login["user"] or ""), safe="")
    password = quote(str(login["password"] or ""), safe="")
    url = (
        f"postgres://{user}:{password}@{login['host']}:{login['port']}/"
        f"{quote(str(login['database'] or ''), safe='')}"
    )
    command = [node, str(NODE_DIR / "postgresjs.mjs"), url, name, str(duration), str(REPEATS)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60 + 4 * duration, check=True
        )
        runs = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError, OSError) as exc:
        progress(f"[peers] postgres.js failed: {type(exc).__name__}")
        return None
    return float(statistics.median(runs))


def run_peers(config: PoolConfig, duration: float) -> list[PeerResult]:
    loop = _Loop()
    try:
        return loop.run(_peer_rates(config, duration))
    finally:
        loop.loop.close()


# --- the command -------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Everything ``pgfast bench`` prints."""

    server: str
    server_version: str
    impl: str
    duration: float
    cases: list[CaseResult]
    placement: str | None = None  # CPUs of client and throwaway server, when pinned
    peers: list[PeerResult] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        for case, result in zip(data["cases"], self.cases, strict=True):
            case["ratio"] = result.ratio
        return json.dumps({"pgfast_version": __version__, "repeats": REPEATS, **data}, indent=2)

    def table(self) -> str:
        header = ("case", "pgfast ops/s", "psycopg ops/s", "pgfast/psycopg")
        rows = [
            (c.title, f"{c.pgfast_ops:,.0f}", f"{c.psycopg_ops:,.0f}", f"{c.ratio:.2f}x")
            for c in self.cases
        ]
        width = max(len(r[0]) for r in [header, *rows])
        lines = [
            f"pgfast {__version__} ({self.impl}) vs psycopg {psycopg.__version__} on "
            f"{self.server} (PostgreSQL {self.server_version})",
            f"pools of {POOL_SIZE}, median of {REPEATS} x {self.duration / REPEATS:.2g} s "
            "per case and library; ratio > 1: pgfast is faster",
            *([self.placement] if self.placement else []),
            "",
        ]
        for row in [header, *rows]:
            lines.append(f"{row[0]:<{width}}  {row[1]:>13}  {row[2]:>13}  {row[3]:>14}")
        if self.peers:
            names = sorted({peer for result in self.peers for peer in result.peers})
            lines += ["", "peers (async; ratio = pgfast / peer):"]
            for result in self.peers:
                shown = "  ".join(
                    f"{peer} {ops:,.0f} ({result.pgfast_ops / ops:.2f}x)"
                    for peer in names
                    if (ops := result.peers.get(peer))
                )
                lines.append(f"  {result.title}: pgfast {result.pgfast_ops:,.0f}  {shown}")
        return "\n".join(lines)


def connect_probe(config: PoolConfig) -> tuple[str, str]:
    """``host:port/dbname`` and version of the server; a clear ``Error`` when unreachable."""
    try:
        with psycopg.connect(config.conninfo, **config.connect_kwargs) as conn:
            info = conn.info
            major, minor = divmod(info.server_version, 10000)
            return f"{info.host}:{info.port}/{info.dbname}", f"{major}.{minor}"
    except psycopg.OperationalError as exc:
        reason = " ".join(config.redact(str(exc)).split())
        raise Error(f"cannot connect to {address(config.conninfo)}: {reason}") from None


def bench(url: str, duration: float, placement: str | None = None, peers: bool = True) -> Report:
    """Run every case against ``url`` for ``duration`` seconds per case and library."""
    config = resolve_config(url, POOL_OPTIONS, "bench")
    server, version = connect_probe(config)
    progress(f"benchmarking {server} (PostgreSQL {version}), pgfast {IMPL} vs psycopg")
    settle_malloc()
    try:
        cases = run_cases(config, duration)
        peer_results = run_peers(config, duration) if peers else []
    except psycopg.Error as exc:
        raise Error(f"failed on {server}: {config.redact(str(exc))}") from None
    return Report(server, version, IMPL, duration, cases, placement, peer_results)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind through the `with` blocks so that pools and a throwaway server are closed.
    raise SystemExit(128 + signum)


def same_cpu(cluster: LocalCluster) -> str | None:
    """Pin this process and the throwaway ``cluster`` to one CPU: the library's CPU cost shows."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = sorted(os.sched_getaffinity(0))[0]
    try:
        cluster.set_cpu_affinity([cpu])
        os.sched_setaffinity(0, [cpu])
    except OSError:
        return None
    return f"client and server on CPU {cpu}"


@contextmanager
def _throwaway_server(together: bool = False) -> Iterator[tuple[str, str | None]]:
    progress("DATABASE_URL is unset: starting a throwaway PostgreSQL server ...")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with LocalCluster() as cluster:
            progress(f"throwaway server running in {cluster.directory}")
            placement = same_cpu(cluster) if together else separate_cpus(cluster)
            if placement:
                progress(placement)
            yield cluster.primary_url, placement
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress("throwaway server stopped")


def handler(args: argparse.Namespace) -> int:
    """``pgfast bench``: print the table (or JSON); 1 when the server cannot be used."""
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    try:
        peers = not getattr(args, "no_peers", False)
        if url:
            report = bench(url, args.duration, None, peers)
        else:
            with _throwaway_server(getattr(args, "same_cpu", False)) as (throwaway, placement):
                report = bench(throwaway, args.duration, placement, peers)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    except ConfigurationError as exc:
        progress(str(exc))
        return 2
    except Error as exc:
        progress(str(exc))
        return 1
    print(report.to_json() if args.json else report.table())
    return 0
