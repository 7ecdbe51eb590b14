"""The pytest plugin loads in every pytest run of every project that installs pgfast,
so it must import on platforms without POSIX-only modules (Windows has no pwd or grp)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Modules Windows lacks; None in sys.modules makes their import an ImportError.
BLOCK = (
    "import sys\n"
    "for name in ('pwd', 'grp', 'fcntl', 'termios', 'resource'):\n"
    "    sys.modules[name] = None\n"
)


@pytest.mark.nodb
def test_plugin_imports_without_posix_modules() -> None:
    code = BLOCK + textwrap.dedent(
        """
        import pgfast.testing.pytest_plugin as plugin
        from pgfast.testing import LocalCluster
        assert callable(plugin.pg_url) and callable(plugin.pg_cluster)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_fixtures_work_without_posix_modules(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import psycopg

            def test_pg_url(pg_url):
                with psycopg.connect(pg_url) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            """
        )
    )
    # pytest loads the plugin through its pytest11 entry point, as in any project.
    run = "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'test_inner.py']))"
    code = f"{BLOCK}import pytest\n{run}\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
