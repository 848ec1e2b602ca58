# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B4: ``GET /workflows/<id>`` of a 10,000-task and a 10-task run, as an admin."""

import json
import statistics
import time
from datetime import datetime, timezone

import sqlalchemy as sa
from flask_security.utils import hash_password
from invenio_access.models import ActionUsers
from invenio_db import db

from invenio_wtflow.permissions import wtflow_admin_action

from .b5_create import core_insert
from .bench_tasks import Wide10, Wide10000
from .common import bench_app, count_sql, describe, write_result

Wide = {10: Wide10, 10000: Wide10000}

PASSWORD = "a-long-benchmark-password"
SIZES = (10000, 10)
PAIRS = 5


def make_admin(app):
    """A real user with the ``wtflow-admin`` action (as in tests/test_views.py)."""
    datastore = app.extensions["security"].datastore
    user = datastore.create_user(
        email="admin@example.org",
        password=hash_password(PASSWORD),
        active=True,
        confirmed_at=datetime.now(timezone.utc),
    )
    db.session.commit()
    db.session.add(ActionUsers.allow(wtflow_admin_action, user=user))
    db.session.commit()
    return user.email


def finished_run(size):
    """Insert a run of ``size`` tasks (Core) that looks finished.

    The rows are those ``Workflow.create`` writes (B5 times that); every task
    then gets a status, a result and timestamps, as after a successful run.
    """
    workflow_id = core_insert(Wide[size].compile(), f"bench-wide-{size}")
    db.session.execute(
        sa.text(
            "UPDATE wtflow_task SET status = 'success', attempt = 1, "
            "celery_id = gen_random_uuid()::text, result = '{\"ok\": true}', "
            "progress = 1, queued_at = now(), started_at = now(), "
            "finished_at = now() WHERE workflow_id = :id"
        ),
        {"id": str(workflow_id)},
    )
    db.session.execute(
        sa.text(
            "UPDATE wtflow_workflow SET status = 'success', started_at = now(), "
            "finished_at = now() WHERE id = :id"
        ),
        {"id": str(workflow_id)},
    )
    db.session.commit()
    return workflow_id


TASK_COLUMNS = (
    "id, workflow_id, name, position, status, message, progress, attempt, "
    "retries, queued_at, started_at, finished_at, result, error, traceback"
)


def core_dump(workflow_id):
    """The same task list with two Core queries and ``json.dumps`` (a bound)."""
    tasks = db.session.execute(
        sa.text(
            f"SELECT {TASK_COLUMNS} FROM wtflow_task WHERE workflow_id = :id "
            "ORDER BY position"
        ),
        {"id": str(workflow_id)},
    ).mappings()
    edges = {}
    for task_id, depends_on_id in db.session.execute(
        sa.text(
            "SELECT d.task_id, d.depends_on_id FROM wtflow_task_dependency d "
            "JOIN wtflow_task t ON t.id = d.task_id WHERE t.workflow_id = :id"
        ),
        {"id": str(workflow_id)},
    ):
        edges.setdefault(task_id, []).append(str(depends_on_id))
    payload = [
        dict(task, depends_on=sorted(edges.get(task["id"], ()))) for task in tasks
    ]
    return json.dumps({"tasks": payload}, sort_keys=True, default=str)


def pg_json(workflow_id):
    """The same task list rendered as JSON by PostgreSQL (``json_agg``)."""
    return db.session.execute(
        sa.text(
            "SELECT json_agg(json_build_object("
            "'id', t.id, 'workflow_id', t.workflow_id, 'name', t.name, "
            "'position', t.position, 'status', t.status, 'message', t.message, "
            "'progress', t.progress, 'attempt', t.attempt, 'retries', t.retries, "
            "'queued_at', t.queued_at, 'started_at', t.started_at, "
            "'finished_at', t.finished_at, 'result', t.result, 'error', t.error, "
            "'traceback', t.traceback, 'depends_on', coalesce((SELECT "
            "json_agg(d.depends_on_id ORDER BY d.depends_on_id) FROM "
            "wtflow_task_dependency d WHERE d.task_id = t.id), '[]'::json)"
            ") ORDER BY t.position)::text FROM wtflow_task t "
            "WHERE t.workflow_id = :id"
        ),
        {"id": str(workflow_id)},
    ).scalar()


def main():
    """Alternate GETs of both sizes; count statements and time each one."""
    with bench_app() as app:
        email = make_admin(app)
        urls = {size: f"/workflows/{finished_run(size)}" for size in SIZES}
        db.session.remove()
        client = app.test_client()
        res = client.post("/login", json={"email": email, "password": PASSWORD})
        assert res.status_code == 200, res.get_data(as_text=True)
        bound = {size: [] for size in SIZES}
        in_pg = {size: [] for size in SIZES}
        for _ in range(PAIRS):
            for size in SIZES:
                for func, series in ((core_dump, bound), (pg_json, in_pg)):
                    db.session.remove()
                    start = time.perf_counter()
                    func(urls[size].rsplit("/", 1)[1])
                    series[size].append((time.perf_counter() - start) * 1000)
        db.session.remove()
        times = {size: [] for size in SIZES}
        statements = {size: [] for size in SIZES}
        sizes = {}
        for i in range(PAIRS + 1):  # the first pair warms caches, not reported
            for size in SIZES:
                db.session.remove()
                with count_sql(db.engine) as counter:
                    start = time.perf_counter()
                    res = client.get(urls[size])
                    body = res.get_data()
                    elapsed = time.perf_counter() - start
                assert res.status_code == 200, res.status_code
                assert len(res.json["tasks"]) == size
                sizes[size] = len(body)
                if i:
                    times[size].append(elapsed * 1000)
                    statements[size].append(counter.statements)
            if i:
                print(
                    f"  pair {i}: {times[SIZES[0]][-1]:.1f} ms "
                    f"({statements[SIZES[0]][-1]} statements) vs "
                    f"{times[SIZES[1]][-1]:.2f} ms ({statements[SIZES[1]][-1]})",
                    flush=True,
                )
    big, small = SIZES
    marginal = [
        1000 * (a - b) / (big - small) for a, b in zip(times[big], times[small])
    ]
    per_task = statistics.median(marginal)

    def us_per_task(series):
        return (
            1000
            * (statistics.median(series[big]) - statistics.median(series[small]))
            / (big - small)
        )

    bound_per_task = us_per_task(bound)
    pg_per_task = us_per_task(in_pg)
    equal = len(set(statements[big] + statements[small])) == 1
    result = {
        "id": "B4",
        "scenario": f"GET /workflows/<id> of a finished run with {big} tasks "
        f"(engine column) and with {small} tasks (baseline column)",
        "against": f"the same request for {small} tasks",
        "unit": "ms",
        "target": "statements equal; < 20 µs per task",
        "engine": describe(times[big]),
        "baseline": describe(times[small]),
        "ratios": [a / b for a, b in zip(times[big], times[small])],
        "table": {
            "ratio": f"{per_task:.1f} µs/task; statements "
            f"{statements[big][0]} vs {statements[small][0]}",
        },
        "extra": {
            "us_per_task_marginal": describe(marginal),
            "us_per_task_total": 1000 * statistics.median(times[big]) / big,
            "statements": {str(k): v for k, v in statements.items()},
            "response_bytes": {str(k): v for k, v in sizes.items()},
            "core_dump_ms": {str(k): describe(v) for k, v in bound.items()},
            "core_dump_us_per_task": bound_per_task,
            "pg_json_ms": {str(k): describe(v) for k, v in in_pg.items()},
            "pg_json_us_per_task": pg_per_task,
        },
        "met": equal and per_task < 20,
        "notes": [
            "µs per task = (time of 10,000 - time of 10) / 9,990, median of pairs",
            "Flask test client in-process, a real admin logged in through "
            "invenio-accounts; session cleared before every request",
            f"bound: the same task list with two Core queries and json.dumps "
            f"costs {bound_per_task:.1f} µs per task; rendered by PostgreSQL "
            f"(json_agg) {pg_per_task:.1f} µs per task",
        ],
    }
    result["ratio_median"] = statistics.median(result["ratios"])
    write_result(result)


if __name__ == "__main__":
    main()
