# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Where B3's latency goes: the steps of a one-task run on the real worker.

Runs B3's one-task workflow (``bench-one``) in sequence on the same worker
as B3, and prints, for each step, the median time since the submit:

- when ``Workflow.create(..., start=True)`` returned (committed, published);
- the task's ``queued_at``, ``started_at`` (its claim) and ``finished_at``,
  and the run's ``finished_at``, as the rows record them (times taken in
  the caller and the worker, on the same machine's clock);
- when ``Workflow.wait()`` returned, and when reading ``status`` after it
  did.

No baseline and no pairs: a diagnostic, not a scenario (not run by
``run.sh``). With PostgreSQL's ``log_min_duration_statement = 0`` around
it, the server's log gives each statement's share::

    python -m benchmarks.b3_timeline [runs]
"""

import statistics
import sys
import time
from datetime import timezone

import sqlalchemy as sa
from invenio_db import db

from invenio_wtflow import Workflow

from .common import Worker, bench_app, poll_engine, truncate_runs, warm_up

RUNS = 200

_ROWS = sa.text(
    "SELECT t.queued_at, t.started_at, t.finished_at, w.finished_at "
    "FROM wtflow_task t JOIN wtflow_workflow w ON w.id = t.workflow_id "
    "WHERE w.id = :id"
)

STEPS = (
    "create returned",
    "task queued_at",
    "task started_at (claim)",
    "task finished_at",
    "run finished_at",
    "wait() returned",
    "status read",
)


def timeline():
    """Seconds from submit to each step of :data:`STEPS`, for one run."""
    wall = time.time()
    start = time.perf_counter()
    workflow = Workflow.create("bench-one", start=True)
    created = time.perf_counter() - start
    workflow.wait(timeout=60)
    waited = time.perf_counter() - start
    assert workflow.status == "success"
    read = time.perf_counter() - start
    workflow_id = workflow.id
    db.session.remove()
    with poll_engine().connect() as connection:
        row = connection.execute(_ROWS, {"id": str(workflow_id)}).one()
    recorded = [t.replace(tzinfo=timezone.utc).timestamp() - wall for t in row]
    return [created, *recorded, waited, read]


def main(runs=RUNS):
    """Print the median of each step over ``runs`` runs, in milliseconds."""
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()
        truncate_runs()
        timelines = [timeline() for _ in range(runs)]
    print(f"{runs} one-task runs in sequence; median ms since submit:")
    for index, step in enumerate(STEPS):
        median = statistics.median(t[index] for t in timelines)
        print(f"  {step:<24} {1000 * median:6.2f}")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
