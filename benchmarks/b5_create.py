# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B5: ``Workflow.create`` of 10,000 tasks vs a Core ``executemany`` of the rows."""

import time
import uuid

from invenio_db import db

from invenio_wtflow import Workflow
from invenio_wtflow.models import TaskDependency, TaskRun, WorkflowRun

from .bench_tasks import FanIn10000
from .common import (
    CPUMeter,
    alternate,
    bench_app,
    compare,
    compare_cpu,
    count_sql,
    truncate_runs,
    write_result,
)

NAME = "bench-fan-in-10000"


def engine_create(counts):
    """Time ``Workflow.create`` (compile, ORM, versions, commit)."""
    with count_sql(db.engine) as counter:
        start = time.perf_counter()
        Workflow.create(NAME)
        elapsed = time.perf_counter() - start
    db.session.remove()
    counts.append(counter.snapshot())
    return elapsed


def timed_core_insert(graph):
    """Time :func:`core_insert` of the rows of a compiled graph."""
    start = time.perf_counter()
    core_insert(graph)
    return time.perf_counter() - start


def core_insert(graph, name=NAME):
    """Insert the rows of a run with SQLAlchemy Core ``executemany``; its id."""
    nodes = [(node.name, node.signature, node.depends_on) for node in graph.nodes]
    workflow_id = uuid.uuid4()
    ids = [uuid.uuid4() for _ in nodes]
    tasks = [
        {
            "id": ids[position],
            "workflow_id": workflow_id,
            "position": position,
            "name": name,
            "signature": signature,
            "status": "pending",
            "remaining": len(depends_on),
        }
        for position, (name, signature, depends_on) in enumerate(nodes)
    ]
    edges = [
        {"task_id": ids[position], "depends_on_id": ids[dep]}
        for position, (_, _, depends_on) in enumerate(nodes)
        for dep in depends_on
    ]
    with db.engine.begin() as conn:
        conn.execute(
            WorkflowRun.__table__.insert(),
            [
                {
                    "id": workflow_id,
                    "root_id": workflow_id,
                    "name": name,
                    "data": {},
                    "status": "pending",
                    "output": graph.output,
                    "version_id": 1,
                }
            ],
        )
        conn.execute(TaskRun.__table__.insert(), tasks)
        if edges:
            conn.execute(TaskDependency.__table__.insert(), edges)
    return workflow_id


def main():
    """Alternate both inserts on an emptied database."""
    counts = []
    with bench_app():
        start = time.perf_counter()
        graph = FanIn10000.compile()
        compile_seconds = time.perf_counter() - start
        tasks, edges = len(graph.nodes), sum(len(n.depends_on) for n in graph.nodes)
        cpu = []
        pairs = alternate(
            lambda: engine_create(counts),
            lambda: timed_core_insert(graph),
            between=lambda side: truncate_runs(),
            meter=CPUMeter(),
            cpu=cpu,
        )
    result = {
        "id": "B5",
        "scenario": f"Workflow.create of {tasks} tasks and {edges} edges "
        "(group + join), all pending",
        "against": "SQLAlchemy Core executemany of the same rows, one transaction",
        "unit": "s",
        "target": "median ratio <= 3.0",
        "extra": {
            "compile_seconds": compile_seconds,
            "engine_sql": counts[0],
        },
        "notes": [
            f"compiling the canvas alone takes {compile_seconds:.2f} s (in the "
            "engine figure, not in the baseline)",
        ],
    }
    result.update(compare(pairs))
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 3.0
    write_result(result)


if __name__ == "__main__":
    main()
