"""Every ```python block of docs/*.md runs against a real PostgreSQL server.

One test per block, named ``page.md:line``. The blocks of a page share one
namespace and run in order: a block's test first runs the blocks above it
that have not run yet, so ``-k`` on a single block still works. The
environment each page sees: ``DATABASE_URL`` (``pg_url``), or for
``CLUSTER_PAGES`` the primary of ``pg_cluster`` plus ``DATABASE_REPLICA_URLS``;
the working directory is a fresh temporary one.

The no-database tests check the pages themselves: every page is listed in
``index.md``, relative links resolve, code fences name their language, and
the ``pgfast`` commands in shell blocks are ones the CLI accepts.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLUSTER_PAGES = frozenset({"clusters.md", "observability.md"})
FENCE = re.compile(r"^```(\S*)\s*$")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the first code line
    language: str
    code: str


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown page, in order."""
    blocks: list[Block] = []
    language: str | None = None
    start = 0
    lines: list[str] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(text)
        if language is None:
            if match:
                language, start, lines = match.group(1), number + 1, []
        elif match and not match.group(1):
            blocks.append(Block(path.name, start, language, "\n".join(lines) + "\n"))
            language = None
        else:
            lines.append(text)
    if language is not None:
        raise AssertionError(f"{path.name}:{start - 1}: code fence never closed")
    return blocks


PAGES = sorted(DOCS.glob("*.md"))
ALL_BLOCKS = {page.name: read_blocks(page) for page in PAGES}
PYTHON_BLOCKS = [b for blocks in ALL_BLOCKS.values() for b in blocks if b.language == "python"]


@dataclass
class PageRun:
    """The shared namespace of one page and how far its blocks have run."""

    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})
    done: int = 0
    failed: str | None = None


_runs: dict[str, PageRun] = {}


def _run_block(block: Block, namespace: dict[str, Any]) -> None:
    # Leading newlines make tracebacks point at the Markdown line. dont_inherit:
    # the examples run as a user's file would, without this module's
    # `from __future__ import annotations` (dataclasses would then look up a
    # "__docs__" module to resolve their string annotations).
    source = "\n" * (block.line - 1) + block.code
    exec(compile(source, str(DOCS / block.page), "exec", dont_inherit=True), namespace)


@pytest.fixture
def docs_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    block: Block = request.node.callspec.params["block"]
    if block.page in CLUSTER_PAGES:
        cluster = request.getfixturevalue("pg_cluster")
        monkeypatch.setenv("DATABASE_URL", cluster.primary_url)
        monkeypatch.setenv("DATABASE_REPLICA_URLS", ",".join(cluster.replica_urls))
    else:
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
        monkeypatch.delenv("DATABASE_REPLICA_URLS", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: f"{b.page}:{b.line}")
def test_python_block(block: Block) -> None:
    page_blocks = [b for b in ALL_BLOCKS[block.page] if b.language == "python"]
    run = _runs.setdefault(block.page, PageRun())
    index = page_blocks.index(block)
    if run.failed is not None and index >= run.done:
        pytest.fail(f"an earlier block of {block.page} failed: {run.failed}")
    for earlier in page_blocks[run.done : index + 1]:
        try:
            _run_block(earlier, run.namespace)
        except BaseException:
            run.failed = f"{earlier.page}:{earlier.line}"
            raise
        run.done += 1


@pytest.mark.nodb
@pytest.mark.repo
def test_docs_exist() -> None:
    assert len(PYTHON_BLOCKS) >= 30, "the guide lost its examples"
    expected = {
        "index.md", "connecting.md", "sql.md", "querying.md", "transactions.md", "errors.md",
        "disposal.md", "clusters.md", "bulk.md", "testing.md", "performance.md", "migrating.md",
    }  # fmt: skip
    assert expected <= {p.name for p in PAGES}


@pytest.mark.nodb
@pytest.mark.repo
def test_index_lists_every_page() -> None:
    linked = set(LINK.findall((DOCS / "index.md").read_text(encoding="utf-8")))
    missing = {p.name for p in PAGES} - linked - {"index.md"}
    assert not missing, f"index.md does not link to {sorted(missing)}"


@pytest.mark.nodb
@pytest.mark.repo
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link to {target}"


@pytest.mark.nodb
@pytest.mark.repo
def test_code_fences_name_their_language() -> None:
    unnamed = [f"{b.page}:{b.line}" for blocks in ALL_BLOCKS.values() for b in blocks
               if not b.language]  # fmt: skip
    assert not unnamed, f"code fences without a language: {unnamed}"


def _pgfast_commands() -> list[tuple[str, list[str]]]:
    found = []
    for blocks in ALL_BLOCKS.values():
        for b in blocks:
            if b.language != "sh":
                continue
            for offset, line in enumerate(b.code.splitlines()):
                # `eval "$(pgfast up ...)"`: look inside the substitution too;
                # a redirection (`> out.json`) ends the command's arguments.
                for match in re.finditer(r"(?:^|\$\(|&&|;|\s)pgfast\s+([^)#;&|<>\"]*)", line):
                    found.append((f"{b.page}:{b.line + offset}", shlex.split(match.group(1))))
    return found


@pytest.mark.nodb
@pytest.mark.repo
def test_shell_examples_use_real_pgfast_commands() -> None:
    from pgfast.cli import build_parser

    commands = _pgfast_commands()
    assert commands, "no pgfast command found in the shell examples"
    parser = build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"{where}: `pgfast {shlex.join(argv)}` is rejected") from exc
