# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""No-op tasks of both sides and the workflow definitions the benchmarks run."""

from pathlib import Path

from celery import chain, chord, group, shared_task

from invenio_wtflow import Workflow, workflow_task

from .common import EXPERIMENTS

ENGINE_OPTIONS = {"ignore_result": True} if "ignore-result" in EXPERIMENTS else {}


#
# Engine side: workflow tasks (their results are recorded in the database).
#
@workflow_task(**ENGINE_OPTIONS)
def wf_noop(*args, **kwargs):
    """Do nothing (engine side)."""
    return None


@workflow_task(**ENGINE_OPTIONS)
def wf_join(results):
    """Return how many results were joined (engine side)."""
    return len(results)


@workflow_task(bind=True, **ENGINE_OPTIONS)
def wf_spawn(self, width, child="bench-one"):
    """Spawn ``width`` runs of ``child`` and join them (engine side, B6).

    Each child gets its index as data, so that each has its own identity
    (spawning the same definition with the same data returns the same run).
    """
    return self.join([self.spawn(child, data={"index": i}) for i in range(width)])


@workflow_task(bind=True, **ENGINE_OPTIONS)
def wf_spawn_many(self, width, child="bench-one"):
    """What :func:`wf_spawn` does, with one ``spawn_many`` call (B6)."""
    items = [{"index": i} for i in range(width)]
    return self.join(self.spawn_many(child, items))


#
# Baseline side: plain Celery tasks (their results go to the result backend).
#
@shared_task
def plain_noop(*args, **kwargs):
    """Do nothing (plain Celery side)."""
    return None


@shared_task
def plain_join(results):
    """Return how many results were joined (plain Celery side)."""
    return len(results)


FLOOR_TABLE = "wtflow_bench_floor"
"""B3's floor: one row per run, with the statuses a one-task run goes through."""

FLOOR_CHANNEL = "wtflow_bench_floor"
"""B3's floor: the ``NOTIFY`` channel of a finished run."""

_floor = {}


def floor_connection():
    """This process's own psycopg2 connection (autocommit) to the bench database."""
    if "connection" not in _floor:
        import psycopg2
        from invenio_db import db

        url = db.engine.url.set(drivername="postgresql")
        connection = psycopg2.connect(url.render_as_string(hide_password=False))
        connection.autocommit = True
        _floor["connection"] = connection
    return _floor["connection"]


@shared_task(ignore_result=True)
def floor_one(run_id):
    """Claim, then record the success of, one floor run (B3's floor).

    The least a durable one-task run costs on this worker: two committed
    conditional updates of one row, one round trip each (autocommit; the
    success, its ``NOTIFY`` and the commit travel as one message), no
    versions, no ORM. See :mod:`benchmarks.b3_floor`.
    """
    with floor_connection().cursor() as cursor:
        cursor.execute(
            f"UPDATE {FLOOR_TABLE} SET status = 'running', started_at = now() "
            "WHERE id = %s AND status = 'queued'",
            (run_id,),
        )
        cursor.execute(
            f"UPDATE {FLOOR_TABLE} SET status = 'success', "
            "finished_at = clock_timestamp() "
            "WHERE id = %(id)s AND status = 'running'; "
            f"NOTIFY {FLOOR_CHANNEL}, %(id)s",
            {"id": run_id},
        )


@shared_task(ignore_result=True)
def database_driver(path):
    """Write the driver of the worker's database connections in ``path``.

    A file rather than a result: a ``get()`` before the baseline's first one
    changes how plain Celery's caller waits for its results.
    """
    from invenio_db import db

    Path(path).write_text(db.engine.dialect.driver)


#
# Canvases, built the same way for both sides.
#
def fan_in(noop, join, width):
    """``chord(group(noop.si() * width), join.s())``: fan-out then one join."""
    return chord(group(noop.si() for _ in range(width)), join.s())


def long_chain(noop, length):
    """``chain(noop.s() * length)``: each task receives the previous result."""
    return chain(noop.s() for _ in range(length))


def wide(noop, width):
    """``group(noop.si() * width)``: independent tasks, no join."""
    return group(noop.si() for _ in range(width))


def spawn_join(spawner, join, width):
    """``chain(spawner.si(width), join.s())``: spawn children, join, one task after.

    Engine only: ``spawner`` spawns ``width`` one-task child runs at run time
    and joins them; ``join`` receives the list of the children's results.
    """
    return chain(spawner.si(width), join.s())


PARKED = "bench-parked"
"""A queue no worker consumes: tasks routed to it stay ``queued`` (B8)."""


def spawn_parked(width):
    """A spawner joining ``width`` children whose only task no worker takes (B8).

    The children stay ``queued``, as in a backlog, until the tree is stopped.
    """
    return chain(wf_spawn_many.si(width, child="bench-parked"), wf_join.s())


class _Lazy:
    """Class attribute built on first access (workers never build big canvases)."""

    def __init__(self, build):
        self.build = build
        self.value = None

    def __get__(self, obj, owner):
        if self.value is None:
            self.value = self.build()
        return self.value


def _definition(name, build):
    """A ``Workflow`` subclass whose canvas is built only when compiled."""
    return type(name, (Workflow,), {"definition": _Lazy(build)})


One = _definition("One", lambda: wf_noop.si())
Chain200 = _definition("Chain200", lambda: long_chain(wf_noop, 200))
FanIn8 = _definition("FanIn8", lambda: fan_in(wf_noop, wf_join, 8))
FanIn1000 = _definition("FanIn1000", lambda: fan_in(wf_noop, wf_join, 1000))
FanIn10000 = _definition("FanIn10000", lambda: fan_in(wf_noop, wf_join, 9999))
Wide10 = _definition("Wide10", lambda: wide(wf_noop, 10))
Wide100 = _definition("Wide100", lambda: wide(wf_noop, 100))
Wide10000 = _definition("Wide10000", lambda: wide(wf_noop, 10000))
Spawn8 = _definition("Spawn8", lambda: spawn_join(wf_spawn, wf_join, 8))
Spawn1000 = _definition("Spawn1000", lambda: spawn_join(wf_spawn, wf_join, 1000))
SpawnMany8 = _definition("SpawnMany8", lambda: spawn_join(wf_spawn_many, wf_join, 8))
SpawnMany1000 = _definition(
    "SpawnMany1000", lambda: spawn_join(wf_spawn_many, wf_join, 1000)
)
Parked = _definition("Parked", lambda: wf_noop.si().set(queue=PARKED))
StopTree100 = _definition("StopTree100", lambda: spawn_parked(100))
StopTree1000 = _definition("StopTree1000", lambda: spawn_parked(1000))

WORKFLOWS = {
    name: {"definition": f"benchmarks.bench_tasks:{cls.__name__}"}
    for name, cls in {
        "bench-one": One,
        "bench-chain-200": Chain200,
        "bench-fan-in-8": FanIn8,
        "bench-fan-in-1000": FanIn1000,
        "bench-fan-in-10000": FanIn10000,
        "bench-wide-10": Wide10,
        "bench-wide-100": Wide100,
        "bench-wide-10000": Wide10000,
        "bench-spawn-8": Spawn8,
        "bench-spawn-1000": Spawn1000,
        "bench-spawn-many-8": SpawnMany8,
        "bench-spawn-many-1000": SpawnMany1000,
        "bench-parked": Parked,
        "bench-stop-tree-100": StopTree100,
        "bench-stop-tree-1000": StopTree1000,
    }.items()
}
"""Definitions registered (``WTFLOW_WORKFLOWS``) in the benchmark app and worker."""
