#!/usr/bin/env bash
# Prove locally what .github/workflows/wheels.yml does on every platform:
#  1. `python -m build` on a snapshot of the work tree: the sdist ships the .pyx sources and no
#     generated C or binaries, and the compiled wheel is built from that sdist;
#  2. the compiled wheel, installed in a fresh venv, imports with PGFAST_IMPL=cython from the
#     venv (not the source tree) and passes the no-database tests run from a copy of tests/;
#  3. the pure wheel (PGFAST_NO_EXTENSIONS=1, also built from the sdist) is py3-none-any, imports
#     as "python" and refuses PGFAST_IMPL=cython;
#  4. cibuildwheel, at the version the workflow pins, accepts [tool.cibuildwheel] and selects
#     exactly CPython 3.10-3.14 for every platform and architecture the workflow builds.
# Usage: tools/check_wheel.sh [--dist-dir DIR]   (DIR receives the sdist and the pure wheel)
# PYTHON names the interpreter that bootstraps the temporary venvs (default: .venv's base).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

dist_dir=""
case "${1:-}" in
  "") ;;
  --dist-dir) dist_dir=$(mkdir -p "${2:?--dist-dir needs a directory}" && cd "$2" && pwd) ;;
  *) echo "usage: $0 [--dist-dir DIR]" >&2; exit 2 ;;
esac

fail() { printf '\ncheck_wheel: FAILED: %s\n' "$*" >&2; exit 1; }
step() { printf '\n--- check_wheel: %s\n' "$*"; }
# quiet LOG CMD...: run CMD with its output in LOG, shown only when CMD fails.
quiet() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
}

python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$python is older than Python 3.11, which cibuildwheel needs"
# The caller's implementation switches must not leak into the builds or the checks.
unset PGFAST_IMPL PGFAST_NO_EXTENSIONS PGFAST_BUILD_ONLY
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d "${TMPDIR:-/tmp}/pgfast-check-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

cibw_version=$(sed -n 's/.*uses: pypa\/cibuildwheel@v\([0-9][0-9.]*\).*/\1/p' \
  .github/workflows/wheels.yml | head -n 1)
[ -n "$cibw_version" ] || fail "no 'uses: pypa/cibuildwheel@vX.Y.Z' in .github/workflows/wheels.yml"

# A fresh venv from the base interpreter of $python: nothing of .venv leaks in.
new_venv() {
  "$python" -m venv "$1" || fail "cannot create a venv with $python"
}

step "tools venv (build, cibuildwheel $cibw_version, PyYAML)"
new_venv "$work/tools"
tools="$work/tools/bin"
quiet "$work/pip-tools.log" "$tools/pip" install build "cibuildwheel==$cibw_version" pyyaml \
  || fail "cannot install build, cibuildwheel==$cibw_version and PyYAML"

step "snapshot of the work tree (committed and untracked, minus ignored files)"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "$repo is not a git work tree"
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | xargs -0 cp --parents -t "$work/src"

step "python -m build: sdist, then the compiled wheel from the sdist"
quiet "$work/build.log" "$tools/python" -m build --outdir "$work/dist" "$work/src" \
  || fail "python -m build failed (log above)"
grep -h '^pgfast: ' "$work/build.log" || true

step "pure wheel (PGFAST_NO_EXTENSIONS=1) from the sdist"
mkdir "$work/sdist"
tar -xzf "$work"/dist/pgfast-*.tar.gz -C "$work/sdist"
PGFAST_NO_EXTENSIONS=1 quiet "$work/build-pure.log" "$tools/python" -m build --wheel \
  --outdir "$work/dist-pure" "$work"/sdist/pgfast-* || fail "building the pure wheel failed (log above)"

step "contents of the sdist and the wheels"
"$tools/python" - "$work/src" "$work/dist" "$work/dist-pure" <<'EOF' || fail "bad distribution contents (above)"
import sys
import tarfile
import zipfile
from pathlib import Path

src, dist, dist_pure = (Path(p) for p in sys.argv[1:])
errors: list[str] = []


def one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        sys.exit(f"expected one {pattern} in {directory}, found {[p.name for p in found]}")
    return found[0]


pyx = sorted(p.stem for p in (src / "src").glob("*.pyx"))
if not pyx:
    errors.append("the work tree has no src/*.pyx")
shipped = sorted(
    str(p.relative_to(src))
    for p in (src / "pgfast").rglob("*")
    if p.suffix == ".py" or p.name == "py.typed"
)

sdist = one(dist, "pgfast-*.tar.gz")
with tarfile.open(sdist) as tar:
    members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
for stem in pyx:
    if f"src/{stem}.pyx" not in members:
        errors.append(f"{sdist.name} lacks src/{stem}.pyx (add it to MANIFEST.in)")
    if f"src/{stem}.c" in members:
        errors.append(f"{sdist.name} ships generated src/{stem}.c (exclude it in MANIFEST.in)")
errors += [f"{sdist.name} ships the binary {m}" for m in members if m.endswith((".so", ".pyd"))]
errors += [f"{sdist.name} lacks {f}" for f in shipped + ["pyproject.toml", "setup.py"]
           if f not in members]


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


compiled = one(dist, "pgfast-*.whl")
names = wheel_names(compiled)
if compiled.name.endswith("-none-any.whl"):
    errors.append(f"{compiled.name}: the compiled build produced a pure wheel "
                  "(no compiler, or no .pyx in the sdist?)")
for stem in pyx:
    if not any(n.startswith(f"pgfast/{stem}.") and n.endswith((".so", ".pyd")) for n in names):
        errors.append(f"{compiled.name} lacks the extension module pgfast/{stem}")
errors += [f"{compiled.name} ships the build input {n}" for n in names if n.endswith((".c", ".pyx"))]

pure = one(dist_pure, "pgfast-*.whl")
pure_names = wheel_names(pure)
if not pure.name.endswith("-py3-none-any.whl"):
    errors.append(f"{pure.name}: the PGFAST_NO_EXTENSIONS=1 wheel is not tagged py3-none-any")
errors += [f"{pure.name} ships the binary {n}" for n in pure_names if n.endswith((".so", ".pyd"))]

for wheel, wnames in ((compiled, names), (pure, pure_names)):
    errors += [f"{wheel.name} lacks {f}" for f in shipped if f not in wnames]

if errors:
    sys.exit("\n".join(f" - {e}" for e in errors))
print(f"sdist: {sdist.name} ({len(pyx)} .pyx sources, no generated C)")
print(f"compiled wheel: {compiled.name}\npure wheel: {pure.name}")
EOF

# Test dependencies: the same list the cibuildwheel wheel tests install.
mapfile -t test_requires < <("$tools/python" -c '
import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["cibuildwheel"]["test-requires"], sep="\n")
')
# The tests run from here: a copy of tests/ and of the pytest configuration, no pgfast/.
mkdir "$work/run"
cp -r "$work/src/tests" "$work/src/pyproject.toml" "$work/run/"

# check_install VENV IMPL: the installed pgfast comes from VENV and uses IMPL.
check_install() {
  (cd "$work/run" && "$1/bin/python" - "$2" "$work/src" <<'EOF') || fail "the wheel installed in $1 is not what was expected (above)"
import importlib
import importlib.machinery
import sys
import sysconfig
from pathlib import Path

impl_name, src = sys.argv[1], Path(sys.argv[2])
import pgfast
import pgfast._impl as impl

site = Path(sysconfig.get_paths()["platlib"]).resolve()
location = Path(pgfast.__file__).resolve()
print(f"pgfast.__file__ = {location}")
print(f"pgfast.__impl__ = {pgfast.__impl__!r}")
assert site in location.parents, f"pgfast was imported from {location}, not from {site}"
assert pgfast.__impl__ == impl_name, f"pgfast.__impl__ is {pgfast.__impl__!r}, not {impl_name!r}"
# The modules the dispatcher chose and, for a compiled wheel, every module built from a .pyx.
modules = {m.__name__: m for m in (getattr(impl, p.lstrip("_")) for p in impl.HOT_PATHS)}
if impl_name == "cython":
    for pyx in sorted((src / "src").glob("*.pyx")):
        modules.setdefault(f"pgfast.{pyx.stem}", importlib.import_module(f"pgfast.{pyx.stem}"))
suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES if impl_name == "cython" else [".py"])
for module in modules.values():
    path = Path(module.__file__ or "").resolve()
    assert path.name.endswith(suffixes), f"{module.__name__} is {path}, not one of {suffixes}"
    assert site in path.parents, f"{module.__name__} was imported from {path}, not from {site}"
    print(f"{module.__name__}: {path.name}")
EOF
}

# run_nodb_tests VENV [ENV=VALUE...]: the wheel's no-database tests, from the copy of tests/.
run_nodb_tests() {
  local venv=$1 rc=0
  shift
  (cd "$work/run" && env "$@" "$venv/bin/python" -m pytest -m "nodb and not repo" -p no:cacheprovider -q tests) \
    || rc=$?
  case $rc in
    0) ;;
    5) fail "no no-database test ran against the wheel in $venv" ;;
    *) fail "no-database tests failed against the wheel in $venv (pytest exit $rc)" ;;
  esac
}

step "compiled wheel in a fresh venv, PGFAST_IMPL=cython"
new_venv "$work/venv-compiled"
quiet "$work/pip-compiled.log" \
  "$work/venv-compiled/bin/pip" install "$work"/dist/pgfast-*.whl "${test_requires[@]}" \
  || fail "installing the compiled wheel failed"
PGFAST_IMPL=cython check_install "$work/venv-compiled" cython
run_nodb_tests "$work/venv-compiled" PGFAST_IMPL=cython

step "pure wheel in a fresh venv"
new_venv "$work/venv-pure"
quiet "$work/pip-pure.log" \
  "$work/venv-pure/bin/pip" install "$work"/dist-pure/pgfast-*.whl "${test_requires[@]}" \
  || fail "installing the pure wheel failed"
check_install "$work/venv-pure" python
if out=$(cd "$work/run" && PGFAST_IMPL=cython "$work/venv-pure/bin/python" -c 'import pgfast' 2>&1)
then
  fail "the pure wheel imported with PGFAST_IMPL=cython: a fallback would pass the wheel tests"
fi
grep -q 'PGFAST_IMPL=cython' <<<"$out" \
  || fail "the pure wheel failed with PGFAST_IMPL=cython, but not with pgfast's error: $out"
echo "PGFAST_IMPL=cython refuses the pure wheel: $(tail -n 1 <<<"$out")"
run_nodb_tests "$work/venv-pure" PGFAST_NO_EXTENSIONS=1

step "cibuildwheel $cibw_version configuration"
"$tools/python" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' \
  .github/workflows/wheels.yml || fail ".github/workflows/wheels.yml is not valid YAML"
# platform, architecture (empty: the configured default on this machine), expected identifiers
check_identifiers() {
  local platform=$1 archs=$2 expected=$3 got
  got=$(cd "$work/src" && "$tools/cibuildwheel" --print-build-identifiers --platform "$platform" \
    ${archs:+--archs "$archs"}) || fail "cibuildwheel rejects the configuration for $platform"
  got=$(tr -s ' \n' '\n' <<<"$got" | sort | xargs)
  expected=$(tr ' ' '\n' <<<"$expected" | sort | xargs)
  [ "$got" = "$expected" ] \
    || fail "cibuildwheel --platform $platform ${archs:+--archs $archs} selects: $got; expected: $expected"
  echo "$platform ${archs:-(default archs)}: $got"
}
cps="cp310 cp311 cp312 cp313 cp314"
each() { local cp; for cp in $cps; do printf '%s ' "$cp-$1"; done; }
host_arch=$(uname -m)
check_identifiers linux "" "$(each "manylinux_$host_arch")$(each "musllinux_$host_arch")"
check_identifiers linux aarch64 "$(each manylinux_aarch64)$(each musllinux_aarch64)"
check_identifiers macos x86_64 "$(each macosx_x86_64)"
check_identifiers macos arm64 "$(each macosx_arm64)"
check_identifiers windows "" "$(each win_amd64)"

if [ -n "$dist_dir" ]; then
  cp "$work"/dist/pgfast-*.tar.gz "$work"/dist-pure/pgfast-*.whl "$dist_dir/"
  echo "copied the sdist and the pure wheel to $dist_dir"
fi
step "all checks passed"
