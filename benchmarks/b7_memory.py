# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B7: RSS of the worker's pool processes after 100 and after 10,000 engine tasks."""

import os
import time

from invenio_db import db

from invenio_wtflow import Workflow

from .common import CONCURRENCY, Worker, bench_app, wait_workflow, write_result

TASKS = int(os.environ.get("WTFLOW_BENCH_B7_TASKS", "10000"))
"""Engine tasks run in all (100 first, then the rest in runs of 100)."""

WIDTH = 100


def run_many(count):
    """Start ``count`` runs of 100 independent tasks at once; wait for them."""
    ids = []
    for _ in range(count):
        ids.append(Workflow.create(f"bench-wide-{WIDTH}").start().id)
        db.session.remove()
    for workflow_id in ids:
        assert wait_workflow(workflow_id, timeout=3600) == "success"


def summary(rss):
    """Total and largest RSS of the pool processes, and the main process."""
    return {
        "main_mib": rss["main"],
        "children_mib": rss["children"],
        "children_total_mib": sum(rss["children"]),
        "children_max_mib": max(rss["children"]),
    }


def main():
    """Measure RSS on a fresh worker after 100 tasks, then after ``TASKS``."""
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        run_many(1)
        time.sleep(1)
        before = summary(worker.rss())
        print(f"  after {WIDTH} tasks: {before}", flush=True)
        start = time.perf_counter()
        run_many(TASKS // WIDTH - 1)
        elapsed = time.perf_counter() - start
        time.sleep(1)
        after = summary(worker.rss())
        print(f"  after {TASKS} tasks: {after}", flush=True)
    growth_total = after["children_total_mib"] / before["children_total_mib"] - 1
    growth_each = [
        a / b - 1 for a, b in zip(after["children_mib"], before["children_mib"])
    ]
    result = {
        "id": "B7",
        "scenario": f"worker RSS after {TASKS} engine tasks vs after {WIDTH} "
        f"(runs of {WIDTH} no-op tasks, {CONCURRENCY} pool processes)",
        "against": "the same worker after 100 tasks",
        "workers": CONCURRENCY,
        "unit": "MiB",
        "target": "growth <= 10%",
        "engine": {
            "min": after["children_total_mib"],
            "median": after["children_total_mib"],
        },
        "baseline": {
            "min": before["children_total_mib"],
            "median": before["children_total_mib"],
        },
        "ratios": [1 + growth_total],
        "ratio_median": 1 + growth_total,
        "table": {
            "ratio": f"growth {100 * growth_total:+.1f}% (pool total), "
            f"max per process {100 * max(growth_each):+.1f}%",
        },
        "met": growth_total <= 0.10 and max(growth_each) <= 0.10,
        "extra": {
            "before": before,
            "after": after,
            "growth_per_process": growth_each,
            "tasks_per_second": (TASKS - WIDTH) / elapsed,
        },
        "notes": [
            "engine column: sum of the pool processes' RSS after all tasks; "
            "baseline column: after the first 100",
        ],
    }
    write_result(result)


if __name__ == "__main__":
    main()
