"""Build the compiled twins of pgfast's hot paths from ``src/*.pyx``.

Every ``src/<name>.pyx`` becomes the extension module ``pgfast.<name>``.

- ``PGFAST_NO_EXTENSIONS=1`` builds the pure-Python package.
- Without a working C compiler the pure package is built, with a warning:
  pgfast must install everywhere.
- With a compiler, a failing compilation is an error: a build never ships
  pure Python in silence where compiled code was possible.
- ``PGFAST_BUILD_ONLY=_compose_c,...`` limits an in-place development build
  to the named modules, so work on one twin is not blocked by another.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _have_c_compiler() -> bool:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    probe = HERE / "build" / "compiler-probe"
    probe.mkdir(parents=True, exist_ok=True)
    source = probe / "probe.c"
    source.write_text("int main(void) { return 0; }\n")
    try:
        compiler.compile([str(source)], output_dir=str(probe))
    except (CompileError, DistutilsError, OSError):
        return False
    return True


def _extensions() -> list[Extension]:
    if _flag("PGFAST_NO_EXTENSIONS"):
        print("pgfast: PGFAST_NO_EXTENSIONS is set, building the pure-Python package")
        return []
    if not _have_c_compiler():
        print(
            "pgfast: WARNING: no working C compiler, building the pure-Python package "
            "(slower; install a compiler for the compiled hot paths)",
            file=sys.stderr,
        )
        return []

    from Cython.Build import cythonize

    sources = sorted((HERE / "src").glob("*.pyx"))
    if not sources:
        raise SystemExit("pgfast: no src/*.pyx found: this source tree or sdist is incomplete")
    only = {n.strip() for n in os.environ.get("PGFAST_BUILD_ONLY", "").split(",") if n.strip()}
    if only:
        sources = [s for s in sources if s.stem in only]
    extensions = [
        Extension(f"pgfast.{src.stem}", [str(src.relative_to(HERE))], include_dirs=["src"])
        for src in sources
    ]
    return cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES, quiet=True)


setup(ext_modules=_extensions())
