# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B3: one-task workflow, submit to success recorded, 200 in sequence (p50, p99).

Each pair is 200 engine runs and 200 plain calls; the order of the two
sides is reversed every other pair (A B, B A, A B...), so that with an even
number of pairs each side runs second, later in a drifting minute, in half
of them. There are ``B3_PAIRS`` (12; see :mod:`benchmarks.common`), and the
ratio is the median of the pairs' ratios. A pair lasts a second or two, and on a shared
machine one pair's ratio can be a third away from the next one's
(benchmarks/README.md, twentieth session): the median of three pairs, as
the other scenarios take, moves by as much as B3's distance to its target.
"""

import os
import statistics
import time
from datetime import timezone

import sqlalchemy as sa
from invenio_db import db

from invenio_wtflow import Workflow

from .bench_tasks import plain_noop
from .common import (
    B3_PAIRS,
    CONCURRENCY,
    POLL,
    CPUMeter,
    Worker,
    bench_app,
    compare_cpu,
    describe,
    flush_backend,
    percentile,
    poll_engine,
    truncate_runs,
    wait_workflow,
    warm_up,
    write_result,
)

RUNS = 200

POLLED = os.environ.get("WTFLOW_BENCH_B3_WAIT") == "poll"
"""Poll the run's status every :data:`POLL` seconds instead of ``Workflow.wait``."""


def engine_latencies():
    """Seconds from submit to success seen (waited for) and recorded (in the row)."""
    seen, recorded = [], []
    query = sa.text("SELECT finished_at FROM wtflow_workflow WHERE id = :id")
    for _ in range(RUNS):
        wall = time.time()
        start = time.perf_counter()
        workflow = Workflow.create("bench-one", start=True)
        if POLLED:
            workflow_id = workflow.id
            db.session.remove()
            assert wait_workflow(workflow_id) == "success"
        else:
            assert workflow.wait(timeout=60).status == "success"
            workflow_id = workflow.id
            db.session.remove()
        seen.append(time.perf_counter() - start)
        with poll_engine().connect() as conn:
            finished = conn.execute(query, {"id": str(workflow_id)}).scalar()
        recorded.append(finished.replace(tzinfo=timezone.utc).timestamp() - wall)
    return seen, recorded


def baseline_latencies():
    """Seconds of ``apply_async().get()`` of a no-op task."""
    values = []
    for _ in range(RUNS):
        start = time.perf_counter()
        plain_noop.apply_async().get(timeout=60)  # see common.run_canvas
        values.append(time.perf_counter() - start)
    return values


def quantiles(values):
    """p50 and p99 in milliseconds."""
    return {
        "p50_ms": 1000 * statistics.median(values),
        "p99_ms": 1000 * percentile(values, 99),
    }


def main():
    """Alternate 200 engine runs and 200 plain calls, ``B3_PAIRS`` times."""
    pairs, cpu = [], []
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()
        meter = CPUMeter(worker)
        sides = {
            "engine": (truncate_runs, engine_latencies),
            "baseline": (flush_backend, baseline_latencies),
        }
        for i in range(B3_PAIRS):
            order = ["engine", "baseline"] if i % 2 == 0 else ["baseline", "engine"]
            measured, used = {}, {}
            for side in order:
                prepare, run = sides[side]
                prepare()
                before = meter.read()
                measured[side] = run()
                used[side] = meter.delta(before, meter.read())
            cpu.append((used["engine"], used["baseline"]))
            seen, recorded = measured["engine"]
            baseline = measured["baseline"]
            pair = {
                "engine": quantiles(seen),
                "engine_recorded": quantiles(recorded),
                "baseline": quantiles(baseline),
            }
            pair["ratio_p50"] = pair["engine"]["p50_ms"] / pair["baseline"]["p50_ms"]
            pairs.append(pair)
            print(f"  pair {i + 1} ({', '.join(order)}): {pair}", flush=True)

    def values(side, key):
        return [p[side][key] for p in pairs]

    result = {
        "id": "B3-polled" if POLLED else "B3",
        "scenario": f"one-task workflow, submit to success, {RUNS} in sequence: "
        + (
            f"p50 (status polled every {int(POLL * 1000)} ms)"
            if POLLED
            else "p50 (Workflow.wait: LISTEN/NOTIFY)"
        ),
        "against": "plain Celery apply_async().get(), Redis result backend",
        "workers": CONCURRENCY,
        "unit": "ms",
        "target": "median p50 ratio <= 2.0",
        "engine": describe(values("engine", "p50_ms")),
        "baseline": describe(values("baseline", "p50_ms")),
        "ratios": [p["ratio_p50"] for p in pairs],
        "extra": {
            "engine_p99_ms": describe(values("engine", "p99_ms")),
            "baseline_p99_ms": describe(values("baseline", "p99_ms")),
            "engine_recorded_p50_ms": describe(values("engine_recorded", "p50_ms")),
            "engine_recorded_p99_ms": describe(values("engine_recorded", "p99_ms")),
        },
        "notes": [
            "engine_recorded: from submit to the run's finished_at written by the "
            "worker (no waiting delay); the p50 ratio uses the figure waited for",
            f"{B3_PAIRS} pairs, the order of the sides reversed every other pair",
        ],
    }
    result["ratio_median"] = statistics.median(result["ratios"])
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 2.0
    write_result(result)


if __name__ == "__main__":
    main()
