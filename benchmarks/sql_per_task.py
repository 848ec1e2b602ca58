# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""SQL statements and commits per task (worker and caller), and a profile.

The worker's pool processes count with SQLAlchemy ``before_cursor_execute``,
``commit`` and ``rollback`` events and Celery's ``before_task_publish``
(``WTFLOW_BENCH_COUNT_DIR``, see ``benchmarks/worker.py``); the caller's
``Workflow.create(..., start=True)`` is counted in this process the same way.
The same worker profiles every engine task with cProfile
(``WTFLOW_BENCH_PROFILE_DIR``); the time per task of the hot path's parts is
reported, and the profile's top functions are written next to the results.
"""

import io
import json
import pstats
import tempfile
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from invenio_db import db

from invenio_wtflow import Workflow

from .common import (
    Worker,
    bench_app,
    count_sql,
    parts_dir,
    truncate_runs,
    wait_workflow,
    warm_up,
    write_result,
)

SHAPES = (
    ("one-task workflow (x20)", "bench-one", 20, 1),
    ("chain of 200", "bench-chain-200", 1, 200),
    ("group of 1000 + join", "bench-fan-in-1000", 1, 1001),
    ("1000 spawned children + spawner + after", "bench-spawn-many-1000", 1, 1002),
)

HOT_PATH = (
    ("whole task (WorkflowTask.__call__)", "invenio_wtflow/tasks.py", "__call__"),
    ("claim", "invenio_wtflow/engine/orchestrator.py", "claim"),
    ("  arguments (tasks._execution)", "invenio_wtflow/tasks.py", "_execution"),
    ("success in one message", "orchestrator.py", "succeed_alone"),
    ("shared success in one message", "orchestrator.py", "succeed_shared_alone"),
    ("succeed: transaction body", "invenio_wtflow/engine/orchestrator.py", "succeed"),
    ("  lock_workflow (root lock)", "orchestrator.py", "lock_workflow"),
    ("  refresh_status", "orchestrator.py", "refresh_status"),
    ("unit of work commits (+ publish)", "invenio_db/uow.py", "commit"),
    ("  publish after commit", "invenio_wtflow/engine/dispatch.py", "publish"),
    (
        "Continuum: make_versions",
        "sqlalchemy_continuum/unit_of_work.py",
        "make_versions",
    ),
    (
        "Continuum: update_version_validity",
        "sqlalchemy_continuum/unit_of_work.py",
        "update_version_validity",
    ),
    ("psycopg2 cursor.execute (round trips)", "~", "execute' of 'psycopg2"),
    ("psycopg2 connection.commit", "~", "commit' of 'psycopg2"),
    ("psycopg 3 cursor.execute (round trips)", "psycopg/cursor.py", "execute"),
    ("psycopg 3 connection.commit", "psycopg/connection.py", "commit"),
    ("task body (wf_noop, wf_join)", "benchmarks/bench_tasks.py", "wf_"),
)
"""Parts of the hot path: label, file name suffix, function name (part)."""


def hot_path(directory):
    """Milliseconds per engine task spent in each part of :data:`HOT_PATH`."""
    files = [str(p) for p in Path(directory).glob("*.prof")]
    if not files:
        return None, ""
    stats = pstats.Stats(*files)
    tasks = sum(
        nc
        for (filename, _, name), (_, nc, _, _, _) in stats.stats.items()
        if filename.endswith("invenio_wtflow/tasks.py") and name == "__call__"
    )
    parts = {}
    for label, suffix, name in HOT_PATH:
        builtin = suffix == "~"
        seconds = sum(
            tt if builtin else ct
            for (filename, _, func), (_, _, tt, ct, _) in stats.stats.items()
            if filename.endswith(suffix)
            and (name in func if builtin or name.endswith("_") else func == name)
        )
        parts[label] = 1000 * seconds / tasks
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("cumulative").print_stats(50)
    return {"tasks": tasks, "ms_per_task": parts}, out.getvalue()


def read_counts(directory):
    """Sum the counters every pool process wrote."""
    total = Counter()
    kinds = Counter()
    for path in Path(directory).glob("*.json"):
        counts = json.loads(path.read_text())
        kinds.update(counts.pop("kinds"))
        total.update(counts)
    return total, kinds


def per_task(total, kinds, tasks):
    """Divide every counter by the number of tasks."""
    return {
        "statements": total["statements"] / tasks,
        "commits": total["commits"] / tasks,
        "rollbacks": total["rollbacks"] / tasks,
        "published": total.get("published", 0) / tasks,
        "kinds": {k: round(v / tasks, 3) for k, v in sorted(kinds.items())},
    }


FLOOR_TASKS = 500


def core_floor():
    """Claim and succeed ``FLOOR_TASKS`` queued tasks with hand-written Core SQL.

    Per task, in two transactions (as the engine): a Continuum transaction
    row, the conditional ``UPDATE ... RETURNING`` and a version row copied
    with ``INSERT ... SELECT``, then the same for success plus the
    dependants' counter decrement: 7 statements, 2 commits, one connection,
    no Celery. It bounds what the engine's transitions cost in the database.
    """
    from sqlalchemy_continuum import version_class

    from invenio_wtflow.models import TaskRun

    names = [
        c.name
        for c in version_class(TaskRun).__table__.columns
        if c.name not in ("transaction_id", "end_transaction_id", "operation_type")
    ]
    columns = ", ".join(names)
    statements = {
        "transaction": sa.text(
            "INSERT INTO transaction (id, issued_at) VALUES "
            "(nextval('transaction_id_seq'), now()) RETURNING id"
        ),
        "claim": sa.text(
            "UPDATE wtflow_task SET status = 'running', started_at = now(), "
            "updated = now() WHERE id = :id AND status = 'queued' AND "
            "celery_id = :celery_id RETURNING workflow_id, position, signature"
        ),
        "succeed": sa.text(
            "UPDATE wtflow_task SET status = 'success', result = 'null', "
            "progress = 1, finished_at = now(), updated = now() WHERE id = :id "
            "AND status = 'running' AND celery_id = :celery_id RETURNING workflow_id"
        ),
        "version": sa.text(
            f"INSERT INTO wtflow_task_version ({columns}, transaction_id, "
            f"operation_type) SELECT {columns}, :tx, 1 FROM wtflow_task "
            "WHERE id = :id"
        ),
        "dependants": sa.text(
            "UPDATE wtflow_task SET remaining = remaining - 1 WHERE id IN "
            "(SELECT task_id FROM wtflow_task_dependency WHERE depends_on_id = :id) "
            "AND status = 'pending' RETURNING id, remaining"
        ),
    }
    rounds = FLOOR_TASKS // 100
    tasks = []
    for _ in range(rounds):
        workflow = Workflow.create("bench-wide-100")
        db.session.execute(
            sa.text(
                "UPDATE wtflow_task SET status = 'queued', "
                "celery_id = gen_random_uuid()::text WHERE workflow_id = :id"
            ),
            {"id": str(workflow.id)},
        )
        db.session.commit()
        tasks += db.session.execute(
            sa.text("SELECT id, celery_id FROM wtflow_task WHERE workflow_id = :id"),
            {"id": str(workflow.id)},
        ).all()
    db.session.remove()
    with count_sql(db.engine) as counter, db.engine.connect() as conn:
        cpu, start = time.process_time(), time.perf_counter()
        for task_id, celery_id in tasks:
            for step in ("claim", "succeed"):
                params = {"id": task_id, "celery_id": celery_id}
                tx = conn.execute(statements["transaction"]).scalar()
                assert conn.execute(statements[step], params).first() is not None
                conn.execute(statements["version"], dict(params, tx=tx))
                if step == "succeed":
                    conn.execute(statements["dependants"], params).all()
                conn.commit()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(tasks)
    return {
        "tasks": n,
        "ms_per_task": 1000 * elapsed / n,
        "caller_cpu_ms_per_task": 1000 * cpu / n,
        "statements_per_task": counter.statements / n,
        "commits_per_task": counter.commits / n,
    }


def main():
    """Run each shape once on a counting worker; report per-task figures."""
    directory = tempfile.mkdtemp(prefix="wtflow-bench-count-")
    profiles = tempfile.mkdtemp(prefix="wtflow-bench-profile-")
    env = {"WTFLOW_BENCH_COUNT_DIR": directory, "WTFLOW_BENCH_PROFILE_DIR": profiles}
    shapes = []
    with bench_app() as app, Worker(env=env) as w:
        w.start(app.extensions["flask-celeryext"].celery)
        warm_up()
        time.sleep(1)
        for label, name, runs, width in SHAPES:
            truncate_runs()
            before, before_kinds = read_counts(directory)
            caller = Counter()
            caller_kinds = Counter()
            ids = []
            for _ in range(runs):
                with count_sql(db.engine) as counter:
                    ids.append(Workflow.create(name, start=True).id)
                    db.session.remove()
                snap = counter.snapshot()
                caller_kinds.update(snap.pop("kinds"))
                caller.update(snap)
                for workflow_id in ids[-1:]:
                    assert wait_workflow(workflow_id) == "success"
            time.sleep(1)  # the last task writes its counts after reporting
            after, after_kinds = read_counts(directory)
            after.subtract(before)
            after_kinds.subtract(before_kinds)
            tasks = after["tasks"]
            assert tasks == runs * width, (tasks, runs * width)
            shapes.append(
                {
                    "shape": label,
                    "tasks": tasks,
                    "worker_per_task": per_task(
                        after, +after_kinds, tasks  # drop zero counts
                    ),
                    "caller_per_task": per_task(caller, caller_kinds, tasks),
                }
            )
            print(json.dumps(shapes[-1], indent=2), flush=True)
        truncate_runs()
        floor = core_floor()
        print(json.dumps(floor, indent=2), flush=True)
    profile, text = hot_path(profiles)
    (parts_dir() / "SQL-profile.txt").write_text(text)
    write_result(
        {
            "id": "SQL",
            "scenario": "SQL statements and commits per task (engine side)",
            "how": "counted in every worker pool process with SQLAlchemy events "
            "(before_cursor_execute, commit, rollback) and Celery's "
            "before_task_publish; the caller's create+start counted in-process",
            "shapes": shapes,
            "profile": profile,
            "core_floor": floor,
        }
    )


if __name__ == "__main__":
    main()
