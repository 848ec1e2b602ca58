#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT
#
# Run the benchmarks (engine vs plain Celery, alternated in the same run) and
# write benchmarks/results/<date>.md and .json. Not part of the test suite.
#
#   benchmarks/run.sh                 # every scenario
#   benchmarks/run.sh b1_fan_in b3_latency
#   PYTHON=/work/venv/bin/python benchmarks/run.sh
#
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust): the database
# `wtflow_bench` is created and dropped (WTFLOW_BENCH_DB to rename it), and
# Redis on 127.0.0.1:6379: databases 11 (broker) and 12 (result backend) are
# flushed. Knobs: WTFLOW_BENCH_PAIRS (A/B pairs, default 3),
# WTFLOW_BENCH_B3_PAIRS (B3's pairs, default 12),
# WTFLOW_BENCH_CONCURRENCY (worker processes, default 4),
# WTFLOW_BENCH_B7_TASKS (B7's task count; run.sh defaults to 2000 to stay
# near 10 minutes on 2 cores, the scenario's own default is 10000),
# WTFLOW_BENCH_EXPERIMENTS (see benchmarks/common.py; added to the name),
# WTFLOW_BENCH_WORKER_DRIVER (the worker's PostgreSQL driver: psycopg2, the
# default, or psycopg for psycopg 3), WTFLOW_BENCH_NAME (results file name,
# default: today's date).

set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
export WTFLOW_BENCH_B7_TASKS="${WTFLOW_BENCH_B7_TASKS:-2000}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

all=(b1_fan_in b2_chain b3_latency b3_floor b4_read b5_create b6_spawn b7_memory b8_stop sql_per_task)
if (($#)); then scenarios=("$@"); else scenarios=("${all[@]}"); fi

export WTFLOW_BENCH_GIT_START="$(git rev-parse --short HEAD 2>/dev/null || true)"
parts="$(mktemp -d)"
export WTFLOW_BENCH_PARTS="$parts"
name="${WTFLOW_BENCH_NAME:-$(date +%Y-%m-%d)}"
[[ -z "${WTFLOW_BENCH_EXPERIMENTS:-}" ]] || name="$name-${WTFLOW_BENCH_EXPERIMENTS//,/-}"

cleanup() {
    "$PYTHON" -m benchmarks.common drop || true
    rm -rf "$parts"
}
trap cleanup EXIT

echo "==> python: $("$PYTHON" -c 'import sys; print(sys.executable)')"
echo "==> load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
failed=()
for scenario in "${scenarios[@]}"; do
    echo "==> $scenario ($(date +%T))"
    start=$SECONDS
    if ! "$PYTHON" -m "benchmarks.$scenario"; then
        failed+=("$scenario")
    fi
    echo "==> $scenario took $((SECONDS - start)) s"
done

"$PYTHON" -m benchmarks.report "$parts" "benchmarks/results/$name"
echo "==> wrote benchmarks/results/$name.md and .json"
if ((${#failed[@]})); then
    echo "==> FAILED: ${failed[*]}" >&2
    exit 1
fi
