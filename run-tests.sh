#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT
#
# Run the whole test suite: manifest check, documentation build, pytest.
#
# Uses the `python` found on PATH (activate your virtualenv first). Extra
# arguments are passed to pytest, e.g. `./run-tests.sh -k restart -x`.
#
# Database: SQLite (a temporary file) by default. To run on PostgreSQL and
# include the integration tests (marker `integration`, real Celery worker):
#
#   SQLALCHEMY_DATABASE_URI=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
#   WTFLOW_TEST_BROKER_URL=redis://127.0.0.1:6379/7 \
#   ./run-tests.sh
#
# WTFLOW_TEST_WORKER_DATABASE_URI (optional) is the real worker's own URL of
# the same database, e.g. postgresql+psycopg://... to run it on psycopg 3.

set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")"

# Hide a password in a URL: scheme://user:secret@host -> scheme://user:***@host
mask() {
    sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"
}

# On a fresh clone (no virtualenv with the test dependencies on PATH), make one.
if ! python -c "import invenio_wtflow, pytest_invenio, check_manifest, sphinx" 2>/dev/null; then
    echo "==> no test environment on PATH: installing into .venv"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
    .venv/bin/python -m pip install --quiet -e '.[tests,postgresql,docs]'
    export PATH="$PWD/.venv/bin:$PATH"
fi

db_uri="${SQLALCHEMY_DATABASE_URI:-}"
broker_url="${WTFLOW_TEST_BROKER_URL:-}"

echo "==> python:   $(command -v python) ($(python --version 2>&1))"
if [[ -n "$db_uri" ]]; then
    echo "==> database: $(mask "$db_uri") (from SQLALCHEMY_DATABASE_URI)"
else
    echo "==> database: SQLite (default; set SQLALCHEMY_DATABASE_URI for PostgreSQL)"
fi
if [[ -n "$db_uri" && -n "$broker_url" ]]; then
    echo "==> broker:   $(mask "$broker_url") (from WTFLOW_TEST_BROKER_URL)"
    echo "==> integration tests: SELECTED (real Celery worker)"
else
    echo "==> integration tests: skipped (need SQLALCHEMY_DATABASE_URI and WTFLOW_TEST_BROKER_URL)"
fi

echo "==> check-manifest"
python -m check_manifest --no-build-isolation

echo "==> sphinx-build (nitpicky, warnings are errors)"
python -m sphinx -qnNW -E docs docs/_build/html

echo "==> pytest"
python -m pytest "$@"
