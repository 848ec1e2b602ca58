# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B6: one task spawns 1,000 one-task child runs and joins them, vs B1 on the engine.

Both sides run on the engine, on the same worker: A is
``bench-spawn-many-1000`` (``wf_spawn_many`` spawns 1,000 runs of
``bench-one`` with one ``spawn_many`` call and joins them, then ``wf_join``
runs after the join), B is B1's engine side, ``bench-fan-in-1000`` (a
1,000-task group and a join in one run). With ``WTFLOW_BENCH_B6_SPAWN=loop``,
A is ``bench-spawn-1000`` instead (``wf_spawn``: a loop of 1,000 ``spawn``
calls), reported as ``B6-loop``.

After the timed pairs, one more A run, untimed, samples ``pg_stat_activity``
every :data:`SAMPLE` seconds to show what the spawning task's database
session is doing while it spawns (waiting for a lock, running a statement,
or idle while the worker's Python works), and reads the CPU used by the
spawning task's pool process and database backend.
"""

import os
import re
import threading
import time
from collections import Counter

import sqlalchemy as sa

from .common import (
    CONCURRENCY,
    DB_NAME,
    CPUMeter,
    Worker,
    alternate,
    bench_app,
    compare,
    compare_cpu,
    cpu_seconds,
    describe,
    flush_backend,
    poll_engine,
    postgres_cpu,
    run_workflow,
    truncate_runs,
    warm_up,
    write_result,
)

WIDTH = 1000

LOOP = os.environ.get("WTFLOW_BENCH_B6_SPAWN", "many") == "loop"
"""Spawn with a loop of ``spawn`` calls instead of one ``spawn_many``."""

SPAWN = "bench-spawn-1000" if LOOP else "bench-spawn-many-1000"
"""The A side's definition."""

SAMPLE = 0.01
"""Seconds between two samples of ``pg_stat_activity`` in the sampled run."""

PHASES = sa.text("""
    WITH root AS (
        SELECT id, created, finished_at FROM wtflow_workflow
        WHERE name = :name AND parent_id IS NULL
    ), spawner AS (
        SELECT t.started_at FROM wtflow_task t JOIN root ON t.workflow_id = root.id
        WHERE t.position = 0
    ), after AS (
        SELECT t.result, t.started_at FROM wtflow_task t
        JOIN root ON t.workflow_id = root.id WHERE t.position = 1
    ), kids AS (
        SELECT w.created, w.finished_at FROM wtflow_workflow w
        JOIN root ON w.parent_id = root.id
    )
    SELECT
        (SELECT count(*) FROM kids) AS children,
        (SELECT result FROM after) AS joined,
        EXTRACT(EPOCH FROM (SELECT started_at FROM spawner) - root.created)
            AS to_spawner,
        EXTRACT(EPOCH FROM (SELECT max(created) FROM kids)
            - (SELECT started_at FROM spawner)) AS spawning,
        (SELECT count(*) FROM kids
         WHERE finished_at <= (SELECT max(created) FROM kids))
            AS finished_while_spawning,
        EXTRACT(EPOCH FROM (SELECT max(finished_at) FROM kids)
            - (SELECT max(created) FROM kids)) AS draining,
        EXTRACT(EPOCH FROM root.finished_at - (SELECT max(finished_at) FROM kids))
            AS after_join
    FROM root
    """)
"""Where an A run's time went, from the timestamps the engine recorded."""


def phases(name=SPAWN, width=WIDTH):
    """Phases of the finished A run (there is one root: the tables are emptied)."""
    with poll_engine().connect() as conn:
        row = conn.execute(PHASES, {"name": name}).mappings().one()
    if row["children"] != width or row["joined"] != width:
        raise RuntimeError(f"unexpected run: {dict(row)}")
    return {k: float(v) for k, v in row.items() if k not in ("children", "joined")}


ACTIVITY = sa.text(
    "SELECT pid, state, wait_event_type, wait_event, left(query, 60) AS query "
    "FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend'"
)

WINDOW = sa.text("""
    SELECT EXTRACT(EPOCH FROM t.started_at) AS start,
           EXTRACT(EPOCH FROM (SELECT max(k.created) FROM wtflow_workflow k
                               WHERE k.parent_id = w.id)) AS "end"
    FROM wtflow_workflow w JOIN wtflow_task t ON t.workflow_id = w.id
    WHERE w.name = :name AND w.parent_id IS NULL AND t.position = 0
    """)
"""The spawning phase: from the spawning task's start to its last child."""

_SPAWNS = re.compile(r"^\s*INSERT INTO wtflow_workflow\s*\(")


def state_of(row):
    """What a backend is doing: ``lock wait``, ``statement``, ``idle in transaction``..."""
    if row.state == "active":
        if row.wait_event_type == "Lock":
            return "lock wait"
        if row.wait_event_type in ("IO", "LWLock"):
            return "statement (I/O, WAL)"
        return "statement"
    return row.state or "?"


def sampled_spawn_run(worker, name=SPAWN, width=WIDTH):
    """One untimed A run, sampled: where the spawning task's time goes."""
    samples, stop = [], threading.Event()

    def sample():
        with poll_engine().connect() as conn:
            while not stop.is_set():
                rows = conn.execute(ACTIVITY, {"db": DB_NAME}).all()
                samples.append((time.time(), rows))
                time.sleep(SAMPLE)

    pool = worker.children()
    before = {pid: cpu_seconds(pid) for pid in pool}
    backends = postgres_cpu()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run_workflow(name)
    finally:
        stop.set()
        thread.join()
    used = sorted(cpu_seconds(pid) - before[pid] for pid in pool)
    with poll_engine().connect() as conn:
        start, end = (float(v) for v in conn.execute(WINDOW, {"name": name}).one())
    spawner = Counter(
        row.pid
        for _, rows in samples
        for row in rows
        if row.query and _SPAWNS.match(row.query)
    ).most_common(1)[0][0]
    during = [rows for t, rows in samples if start <= t <= end]
    mine = Counter(state_of(r) for rows in during for r in rows if r.pid == spawner)
    others = Counter(state_of(r) for rows in during for r in rows if r.pid != spawner)
    waits = Counter(
        r.wait_event
        for rows in during
        for r in rows
        if r.pid == spawner and state_of(r) == "lock wait"
    )
    total = sum(mine.values())
    return {
        "spawning_s": end - start,
        "samples": len(during),
        "spawner_states": {k: v / total for k, v in mine.most_common()},
        "spawner_lock_waits": dict(waits),
        "other_backends_lock_wait": others["lock wait"] / len(during),
        "spawner_process_cpu_s": used[-1],
        "other_pool_processes_cpu_s": used[:-1],
        "spawner_backend_cpu_s": cpu_seconds(spawner) - backends.get(spawner, 0.0),
        "ms_per_spawn": 1000 * (end - start) / width,
        "spawner_process_cpu_ms_per_spawn": 1000 * used[-1] / width,
    }


def main():
    """Alternate spawn/join and a group/join, both on the engine, same worker."""
    spawned = []
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()
        run_workflow(SPAWN.replace("1000", "8"))  # the spawn and join paths, warm

        def between(side):
            truncate_runs()
            flush_backend()

        def spawn_run():
            elapsed = run_workflow(SPAWN)
            spawned.append(phases())
            return elapsed

        cpu = []
        pairs = alternate(
            spawn_run,
            lambda: run_workflow("bench-fan-in-1000"),
            between=between,
            meter=CPUMeter(worker),
            cpu=cpu,
        )
        truncate_runs()
        flush_backend()
        sample = sampled_spawn_run(worker)
    result = {
        "id": "B6-loop" if LOOP else "B6",
        "scenario": (
            f"one task spawns {WIDTH} one-task child runs "
            f"({'one spawn call each' if LOOP else 'one spawn_many call'}) and "
            f"joins them, then one task; baseline: B1 on the engine "
            f"({WIDTH}-task group + join)"
        ),
        "against": "B1's engine side (bench-fan-in-1000), same worker, same run",
        "workers": CONCURRENCY,
        "unit": "s",
        "target": "median ratio <= 2.0",
    }
    result.update(compare(pairs))
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 2.0
    result["tasks_per_second"] = {
        "engine": (WIDTH + 2) / result["engine"]["median"],
        "baseline": (WIDTH + 1) / result["baseline"]["median"],
    }
    result["phases"] = {k: describe([p[k] for p in spawned]) for k in spawned[0]}
    med = {k: v["median"] for k, v in result["phases"].items()}
    result["notes"] = [
        "A's phases (median, s): submit to spawner started "
        f"{med['to_spawner']:.3g}; spawning {WIDTH} children "
        f"{med['spawning']:.3g} ({1000 * med['spawning'] / WIDTH:.3g} ms per "
        f"spawn; {med['finished_while_spawning']:.0f} children finished "
        f"meanwhile); last child created to last child finished "
        f"{med['draining']:.3g}; last child finished to run finished "
        f"{med['after_join']:.3g}",
        "sampled A run (untimed, pg_stat_activity every 10 ms while spawning): "
        + ", ".join(f"{k} {v:.0%}" for k, v in sample["spawner_states"].items())
        + f" of the spawning session's samples; {sample['ms_per_spawn']:.3g} ms per "
        f"spawn, of which {sample['spawner_process_cpu_ms_per_spawn']:.3g} ms CPU "
        "in the spawning pool process; the other backends were in a lock wait "
        f"{sample['other_backends_lock_wait']:.2f} times per sample on average",
    ]
    result["sampled_run"] = sample
    write_result(result)


if __name__ == "__main__":
    main()
