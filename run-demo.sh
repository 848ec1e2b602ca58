#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT
#
# Run the example video workflow end to end with a real Celery worker.
#
#   ./run-demo.sh [--once] [--keep]
#
# 1. creates the virtualenv .venv-demo (reused when present; WTFLOW_DEMO_VENV
#    overrides the path, PYTHON the interpreter, default python3 >= 3.11) and
#    installs the package in it (`pip install -e .`), only when setup.cfg or
#    pyproject.toml changed since the last install;
# 2. starts a Celery worker (`--pool=solo`) of examples/demo_site.py in the
#    background, on a SQLite database and kombu's filesystem transport in a
#    temporary directory: no database or broker server is needed;
# 3. serves the site on 127.0.0.1 (REST API and status pages), creates and
#    starts a run of the video workflow (python -m examples.run_demo): child
#    workflows per quality, one of which fails and is restarted through the
#    REST API, and a task delegated to a pretend subtitle farm that completes
#    it over HTTP; prints each status change as it is recorded, then the
#    result, every task's history and the status page's address;
# 4. keeps serving the status pages until Ctrl-C (or exits at once with
#    --once), then stops the worker and removes the directory.
#
# Options: --once exits after the run; --keep keeps the temporary directory
# (database, worker log, processed messages). WTFLOW_DEMO_TIMEOUT: seconds to
# wait for the run (default 120); WTFLOW_DEMO_PORT: the port to serve on (a
# free one by default).
#
# Exit status: 0 when the workflow succeeded, non-zero otherwise.

set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")"

keep=0
demo_args=()
for arg in "$@"; do
    case "$arg" in
        --once) demo_args+=(--once) ;;
        --keep) keep=1 ;;
        -h | --help)
            sed -n '4,25p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "run-demo.sh: unknown option: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

export PIP_NO_INPUT=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

started_at=$SECONDS
step() { printf '\n==> %s  (%ds)\n' "$*" $((SECONDS - started_at)); }

# ---------------------------------------------------------------- virtualenv
venv="${WTFLOW_DEMO_VENV:-.venv-demo}"
python="${PYTHON:-python3}"
if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    step "creating the virtualenv $venv with $python"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "ERROR: $python is missing or older than 3.11 (set PYTHON=...)" >&2
        exit 1
    fi
    if ! "$python" -m venv "$venv"; then
        echo "ERROR: could not create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
else
    step "reusing the virtualenv $venv"
fi
case "$venv" in
    /*) py="$venv/bin/python" ;;
    *) py="$PWD/$venv/bin/python" ;;
esac

stamp="$venv/.wtflow-demo-installed"
want="$(cat setup.cfg pyproject.toml | cksum)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    step "installing invenio-wtflow (pip install -e .; log in $venv/pip.log)"
    if ! { "$py" -m pip install --upgrade pip setuptools wheel &&
        "$py" -m pip install -e .; } >"$venv/pip.log" 2>&1; then
        tail -n 30 "$venv/pip.log"
        echo "ERROR: pip install failed (see $venv/pip.log; if $venv is broken, remove it)" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
else
    step "invenio-wtflow is already installed in $venv"
fi
"$py" -c 'import celery, kombu, invenio_wtflow; print(f"celery {celery.__version__}, kombu {kombu.__version__}, invenio-wtflow {invenio_wtflow.__version__}")'

# ---------------------------------------------------------------- the worker
demo_dir="$(mktemp -d "${TMPDIR:-/tmp}/wtflow-demo.XXXXXX")"
export WTFLOW_DEMO_DIR="$demo_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
worker_log="$demo_dir/worker.log"
worker_pid=""

stop_worker() {
    [[ -n "$worker_pid" ]] || return 0
    if kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do  # warm shutdown: up to 10 s
            kill -0 "$worker_pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$worker_pid" 2>/dev/null; then
            echo "worker $worker_pid did not stop; killing it"
            kill -KILL "$worker_pid" 2>/dev/null || true
        fi
    fi
    wait "$worker_pid" 2>/dev/null || true
    echo "worker $worker_pid stopped"
    worker_pid=""
}

finish() {
    local rc=$?
    trap - EXIT INT TERM
    step "stopping the worker"
    stop_worker
    if [[ $rc -ne 0 && -f "$worker_log" ]]; then
        echo
        echo "---- last lines of the worker log ($worker_log) ----"
        tail -n 40 "$worker_log" || true
        echo "----"
    fi
    if [[ $keep -eq 1 ]]; then
        echo "kept $demo_dir (database demo.db, worker.log, broker/)"
    else
        rm -rf "$demo_dir"
    fi
    if [[ $rc -eq 0 ]]; then
        echo "DEMO OK (total $((SECONDS - started_at)) s)"
    else
        echo "DEMO FAILED (exit $rc, total $((SECONDS - started_at)) s)"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${WTFLOW_DEMO_PORT:-}" ]]; then
    WTFLOW_DEMO_PORT="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
export WTFLOW_DEMO_PORT  # the worker builds completion URLs with it

step "starting a Celery worker (solo pool, filesystem broker in $demo_dir)"
"$py" -m celery -A examples.demo_site:celery worker \
    --pool=solo --loglevel=INFO --hostname="wtflow-demo-$$@%h" \
    --without-mingle --without-gossip --without-heartbeat \
    >"$worker_log" 2>&1 </dev/null &
worker_pid=$!
export WTFLOW_DEMO_WORKER_PID="$worker_pid"

for _ in $(seq 1 300); do  # up to 60 s
    grep -q " ready\." "$worker_log" 2>/dev/null && break
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        echo "ERROR: the worker exited during startup" >&2
        exit 1
    fi
    sleep 0.2
done
if ! grep -q " ready\." "$worker_log"; then
    echo "ERROR: the worker is not ready after 60 s" >&2
    exit 1
fi
echo "worker $worker_pid is ready (log: $worker_log)"

# ---------------------------------------------------------------- the run
step "running the video workflow (site on http://127.0.0.1:$WTFLOW_DEMO_PORT/)"
# Ctrl-C ends the serving: the demo then exits 0 if the run had succeeded.
trap ':' INT
set +o errexit
"$py" -m examples.run_demo "${demo_args[@]+"${demo_args[@]}"}"
rc=$?
set -o errexit
trap 'exit 130' INT
exit "$rc"
