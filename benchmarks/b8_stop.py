# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B8: stop a tree of 1,000 live child runs vs a tree of 100, time per child.

Not in issue 7's table: it guards the cost of ``Workflow.stop()`` as a tree
grows. Both sides run on the engine, on the same worker: a task spawns the
children (``bench-stop-tree-1000``, ``bench-stop-tree-100``) and joins them;
each child's only task is routed to a queue no worker consumes, so the
children stay ``queued``, as in a backlog. Once the spawning task is
``waiting``, the caller times ``Workflow.get(root).stop()``, which cancels
every task of the tree in one transaction and revokes the attempts after the
commit. Each side reports its seconds per child: a ratio near 1.0 says the
stop is linear in the number of children (on ``508a4b0`` it was quadratic:
a session flush per child, each over the whole session).

``B8-respawn``: then the caller restarts the root and times until its task,
run again by the worker, has spawned the same children again (each stopped
child reset and queued again, the same run) and is ``waiting``.
"""

import time

import sqlalchemy as sa

from .common import (
    CONCURRENCY,
    CPUMeter,
    Worker,
    alternate,
    bench_app,
    compare,
    compare_cpu,
    count_sql,
    flush_redis,
    poll_engine,
    truncate_runs,
    warm_up,
    write_result,
)

WIDE, NARROW = 1000, 100

SPAWNER_WAITING = sa.text(
    "SELECT count(*) FROM wtflow_task t JOIN wtflow_workflow w "
    "ON w.id = t.workflow_id WHERE w.id = :id AND t.status = 'waiting'"
)


def wait_spawned(root):
    """Wait until the root's spawning task is ``waiting`` (it has spawned)."""
    deadline = time.monotonic() + 300
    with poll_engine().connect() as conn:
        while not conn.execute(SPAWNER_WAITING, {"id": str(root)}).scalar():
            if time.monotonic() > deadline:
                raise TimeoutError(f"tree {root} never spawned its children")
            time.sleep(0.01)


def stopped_tree(width, counts, respawns):
    """Spawn ``width`` parked children, stop the tree; seconds per child.

    Then restart the tree and append to ``respawns`` the seconds per child
    until its children are spawned again.
    """
    from invenio_db import db

    from invenio_wtflow import Workflow

    root = Workflow.create(f"bench-stop-tree-{width}", start=True).id
    db.session.remove()
    wait_spawned(root)
    with count_sql(db.engine) as counter:
        start = time.perf_counter()
        Workflow.get(root).stop()
        elapsed = time.perf_counter() - start
    db.session.remove()
    counts.setdefault(width, counter.snapshot())
    with poll_engine().connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM wtflow_task WHERE status NOT IN "
                "('success', 'failure', 'cancelled')"
            )
        ).scalar()
    if left:
        raise RuntimeError(f"{left} tasks still unfinished after the stop")
    start = time.perf_counter()
    Workflow.get(root).restart()
    db.session.remove()
    wait_spawned(root)
    respawns.append((time.perf_counter() - start) / width)
    return elapsed / width


def main():
    """Alternate a stop of 1,000 children and one of 100, same worker."""
    counts, totals = {}, {WIDE: [], NARROW: []}
    respawns = {WIDE: [], NARROW: []}

    def timed(width):
        per_child = stopped_tree(width, counts, respawns[width])
        totals[width].append(per_child * width)
        return per_child

    def between(side):
        truncate_runs()
        flush_redis()

    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()
        timed(NARROW)  # the spawn, stop and respawn paths, warm
        totals[NARROW].clear()
        respawns[NARROW].clear()
        cpu = []
        pairs = alternate(
            lambda: timed(WIDE),
            lambda: timed(NARROW),
            between=between,
            meter=CPUMeter(worker),
            cpu=cpu,
        )
    result = {
        "id": "B8",
        "scenario": f"Workflow.stop() of a tree whose task joins {WIDE} queued "
        "child runs, seconds per child",
        "against": f"the same stop of a tree of {NARROW} children, same run",
        "workers": CONCURRENCY,
        "unit": "s",
        "target": "median ratio <= 1.5 (linear in the number of children)",
        "extra": {
            "stop_seconds": {str(w): sorted(v) for w, v in totals.items()},
            "engine_sql": counts[WIDE],
            "baseline_sql": counts[NARROW],
        },
    }
    result.update(compare(pairs))
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 1.5
    write_result(result)
    respawn = {
        "id": "B8-respawn",
        "scenario": f"restart of B8's stopped tree of {WIDE} children until its "
        "task has spawned them again, seconds per child",
        "against": f"the same for B8's tree of {NARROW} children, same run",
        "workers": CONCURRENCY,
        "unit": "s",
        "target": "median ratio <= 1.5 (linear in the number of children)",
        "extra": {
            "respawn_seconds": {
                str(w): sorted(v * w for v in per_child)
                for w, per_child in respawns.items()
            }
        },
    }
    respawn.update(compare(list(zip(respawns[WIDE], respawns[NARROW]))))
    respawn["met"] = respawn["ratio_median"] <= 1.5
    write_result(respawn)


if __name__ == "__main__":
    main()
