# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B3's floor: the least a durable one-task run costs on Celery and PostgreSQL.

B3 compares the engine's one-task run with plain Celery's
``apply_async().get()``. A durable run cannot skip three committed
transactions on its critical path (DESIGN.md §3): the run's row exists
before its message is published (invariant 1 and 2), the worker claims the
task with a conditional update before running it, and records the success
with another (invariant 3). This script measures the cheapest possible
version of exactly that, by hand, on the same worker, and alternates it with
the engine and with plain Celery in the same run:

- **floor**: the caller inserts one row (``queued``) in one round trip
  (autocommit), publishes a plain Celery task (``floor_one``, no result),
  and waits for a ``NOTIFY`` on a connection that listens for the whole
  run; the task claims the row (one conditional ``UPDATE``, committed) and
  records its success and the ``NOTIFY`` in one message (committed). No
  versions, no ORM, no history, no orchestration;
- **engine**: B3's engine side (``Workflow.create(..., start=True)`` then
  ``Workflow.wait()``);
- **baseline**: B3's baseline (``plain_noop.apply_async().get()``).

It prints p50 and p99 of each, and per pair the ratios floor/baseline
(what durability costs at the least, whoever implements it), engine/floor
(what the engine adds to that) and engine/baseline (B3's ratio)::

    python -m benchmarks.b3_floor
"""

import select
import statistics
import time
import uuid

import psycopg2

from .b3_latency import RUNS, baseline_latencies, engine_latencies, quantiles
from .bench_tasks import FLOOR_CHANNEL, FLOOR_TABLE, floor_one
from .common import (
    DB_URI,
    PAIRS,
    Worker,
    bench_app,
    describe,
    flush_backend,
    truncate_runs,
    warm_up,
    write_result,
)


def _connect():
    """A psycopg2 connection (autocommit) to the benchmark database."""
    import sqlalchemy as sa

    url = sa.engine.make_url(DB_URI).set(drivername="postgresql")
    connection = psycopg2.connect(url.render_as_string(hide_password=False))
    connection.autocommit = True
    return connection


def create_floor_table():
    """(Re)create the floor's table."""
    with _connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            f"DROP TABLE IF EXISTS {FLOOR_TABLE}; "
            f"CREATE TABLE {FLOOR_TABLE} (id uuid PRIMARY KEY, status text NOT NULL, "
            "created_at timestamp NOT NULL, started_at timestamp, "
            "finished_at timestamp)"
        )


def wait_notified(listener, run_id, timeout=60):
    """Block until ``listener`` receives the ``NOTIFY`` of ``run_id``."""
    deadline = time.monotonic() + timeout
    while True:
        while listener.notifies:
            if listener.notifies.pop(0).payload == run_id:
                return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"floor run {run_id} did not finish")
        select.select([listener], [], [], left)
        listener.poll()


def floor_latencies():
    """Seconds from submit to success seen, for :data:`RUNS` floor runs."""
    writer, listener = _connect(), _connect()
    with listener.cursor() as cursor:
        cursor.execute(f"LISTEN {FLOOR_CHANNEL}")
    values = []
    try:
        for _ in range(RUNS):
            run_id = str(uuid.uuid4())
            start = time.perf_counter()
            with writer.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {FLOOR_TABLE} (id, status, created_at) "
                    "VALUES (%s, 'queued', now())",
                    (run_id,),
                )
            floor_one.apply_async((run_id,))
            wait_notified(listener, run_id)
            values.append(time.perf_counter() - start)
    finally:
        writer.close()
        listener.close()
    with _connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {FLOOR_TABLE} WHERE status = 'success'")
        (done,) = cursor.fetchone()
        cursor.execute(f"TRUNCATE {FLOOR_TABLE}")
    assert done == RUNS, f"{done} of {RUNS} floor runs recorded their success"
    return values


def main():
    """Alternate engine, floor and baseline, :data:`PAIRS` times."""
    rounds = []
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        create_floor_table()
        warm_up()
        floor_latencies()
        for i in range(PAIRS):
            truncate_runs()
            engine, _ = engine_latencies()
            floor = floor_latencies()
            flush_backend()
            baseline = baseline_latencies()
            sides = {
                "engine": quantiles(engine),
                "floor": quantiles(floor),
                "baseline": quantiles(baseline),
            }
            p50 = {side: value["p50_ms"] for side, value in sides.items()}
            sides["ratios"] = {
                "floor/baseline": p50["floor"] / p50["baseline"],
                "engine/floor": p50["engine"] / p50["floor"],
                "engine/baseline": p50["engine"] / p50["baseline"],
            }
            rounds.append(sides)
            print(f"  round {i + 1}: {sides}", flush=True)

    def values(side, key):
        return [r[side][key] for r in rounds]

    ratios = {
        name: describe(values("ratios", name))
        for name in ("floor/baseline", "engine/floor", "engine/baseline")
    }
    result = {
        "id": "B3-floor",
        "scenario": f"one-task run, submit to success seen, {RUNS} in sequence: "
        "p50 of the engine, of a hand-written durable floor (3 committed "
        "round trips), and of plain Celery",
        "against": "plain Celery apply_async().get(), Redis result backend",
        "unit": "ms",
        "target": "none (diagnostic): what B3's target leaves for durability",
        "engine": describe(values("engine", "p50_ms")),
        "baseline": describe(values("baseline", "p50_ms")),
        "ratios": values("ratios", "engine/baseline"),
        "extra": {
            "floor_p50_ms": describe(values("floor", "p50_ms")),
            "floor_p99_ms": describe(values("floor", "p99_ms")),
            "engine_p99_ms": describe(values("engine", "p99_ms")),
            "baseline_p99_ms": describe(values("baseline", "p99_ms")),
            "ratio_medians": {k: v["median"] for k, v in ratios.items()},
            "ratios": ratios,
        },
    }
    result["ratio_median"] = statistics.median(result["ratios"])
    medians = result["extra"]["ratio_medians"]
    result["notes"] = [
        f"floor p50 {result['extra']['floor_p50_ms']['median']:.2f} ms: "
        f"floor/baseline {medians['floor/baseline']:.2f}, "
        f"engine/floor {medians['engine/floor']:.2f} (medians of the rounds)",
    ]
    write_result(result)


if __name__ == "__main__":
    main()
