"""mypy --strict over typical user code (tests/typing_samples/).

The ``*_usage.py`` samples must type-check cleanly. ``errors_expected.py``
must not: each of its lines with a trailing ``E: <text>`` comment must get a
mypy error containing <text>, and no other line may: the check can fail.
mypy treats ``LiteralString`` as ``str``: it checks that ``sql()`` gets a
string, not that the string is a literal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is a development dependency")

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "typing_samples"
CLEAN = sorted(SAMPLES.glob("*_usage.py"))
NEGATIVE = SAMPLES / "errors_expected.py"
ERROR_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")
MARKER = re.compile(r"#\s*E:\s*(?P<text>.+?)\s*$")


def run_mypy(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    # From the project root, so that mypy finds this checkout's pgfast. The
    # cache keeps the check to a few seconds; it lives in this checkout because
    # mypy caches reported errors with their absolute paths, and a cache shared
    # with another checkout replays that checkout's paths. Plain output even
    # where CI sets FORCE_COLOR: the error lines are parsed below.
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("MYPY_FORCE_COLOR", raising=False)
    cache = ROOT / ".mypy_cache" / "typing-samples"
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file", str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir", str(cache),
            "--no-error-summary",
            "--no-color-output",
            "--show-absolute-path",
            *map(str, paths),
        ]
    )  # fmt: skip
    assert not stderr, stderr
    return stdout, status


def errors_by_line(stdout: str, path: Path) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        match = ERROR_LINE.match(line)
        if match and Path(match["path"]).resolve() == path.resolve():
            found.setdefault(int(match["line"]), []).append(match["message"])
    return found


def test_samples_exist() -> None:
    names = {p.name for p in CLEAN}
    assert {"sync_usage.py", "async_usage.py", "bulk_usage.py", "cluster_usage.py"} <= names
    assert NEGATIVE.exists()


def test_typical_user_code_type_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout, status = run_mypy(CLEAN, monkeypatch)
    assert status == 0, f"mypy --strict found errors in typical user code:\n{stdout}"


def test_misuse_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout, status = run_mypy([NEGATIVE], monkeypatch)
    assert status == 1, stdout
    expected = {
        number: match["text"]
        for number, text in enumerate(NEGATIVE.read_text().splitlines(), 1)
        if (match := MARKER.search(text))
    }
    assert len(expected) >= 5
    found = errors_by_line(stdout, NEGATIVE)
    for number, text in expected.items():
        messages = found.get(number, [])
        assert any(text in m for m in messages), (
            f"line {number}: expected an error containing {text!r}, got {messages}\n{stdout}"
        )
    unexpected = {n: m for n, m in found.items() if n not in expected}
    assert not unexpected, f"errors on lines not marked '# E:': {unexpected}"
