# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Child workflows: spawning them from a running task, joining and stopping them.

A child run is an ordinary run whose row names its ``parent_id``, the
``parent_task_id`` that spawned it and the ``root_id`` of the tree; every
change of any run in a tree takes the lock on the root first, so spawning,
joining, failing and stopping are serialised per tree. A child that succeeds
and is not the last its task joins holds the root ``FOR KEY SHARE`` only
(see :func:`~invenio_wtflow.engine.orchestrator.finish_child_shared`): such
children finish side by side, ordered by the joining task's row lock.

A child's identity within its parent task is its ``spawn_key``: the caller's
key, or a hash of the definition name and the canonical JSON of its data. A
unique constraint on ``(parent_task_id, spawn_key)`` makes spawning
idempotent: spawning the same identity again (a retried parent, a concurrent
duplicate) returns the existing child.

A task joins children by going ``waiting``; its ``remaining`` column counts
the joined children that have not finished. Each child that finishes
decrements it in the transaction that finishes the child, under the task's
row lock; the one that brings it to zero completes the join, exactly once,
under the root lock.

Reuse rule, for a retried or restarted parent task: spawning an identity that
exists returns that child. A child that succeeded keeps its result and is not
run again; a child still running (or waiting for a ``max_runs`` slot) is
awaited; a child that failed or was cancelled is restarted (same id). To run a successful child again, restart it
(it is a workflow like any other) or spawn it with another key.
"""

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

from invenio_db import db
from sqlalchemy import func, select
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from ..errors import SpawnConflictError
from ..models import TERMINAL_TASK_STATUSES as TERMINAL_TASKS
from ..models import TaskRun, TaskStatus, WorkflowRun, WorkflowStatus, utcnow
from . import concurrency, dynamic, orchestrator, prepared, statements, versioning
from .graph import input_positions, resolve

logger = logging.getLogger(__name__)

TERMINAL = [
    WorkflowStatus.SUCCESS.value,
    WorkflowStatus.FAILURE.value,
    WorkflowStatus.CANCELLED.value,
]
"""Statuses of a finished run."""

CHILD_ERROR = "ChildWorkflowError"
"""``exc_type`` of the value that stands for a failed child in a join's result."""


@dataclass(frozen=True)
class Join:
    """What a task body returns to wait for child runs (see ``WorkflowTask.join``)."""

    children: tuple
    return_exceptions: bool = False
    single: bool = False


def identity(name, data, key=None):
    """Return ``(spawn_key, digest)`` of a child within its parent task.

    :param name: the definition name.
    :param data: the child's data (JSON-compatible).
    :param key: an explicit key, which replaces the hash as identity.
    """
    canonical = json.dumps([name, data], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return (key if key is not None else digest), digest


def spawn(uow, task_id, celery_id, retries, name, graph, data, key=None, lease=None):
    """Create and start a child run of a running task (or return the existing one).

    See :func:`spawn_many`, which this calls with one child.

    :param data: the child's data.
    :param key: optional explicit identity.
    :returns: ``(child run id, created)``.
    """
    (spawned,) = spawn_many(
        uow, task_id, celery_id, retries, name, graph, [(data, key)], lease
    )
    return spawned


def spawn_many(uow, task_id, celery_id, retries, name, graph, items, lease=None):
    """Create and start child runs of a running task, under one lock (or reuse them).

    One transaction and one root lock for all of them; the existing children
    are found by one query, those that failed or were cancelled run again
    together (see :func:`~invenio_wtflow.engine.orchestrator.reset_runs`),
    and the new ones are inserted together, one ``executemany`` per table
    (see :class:`~invenio_wtflow.engine.orchestrator.Inserts`). A child of a
    definition with ``max_runs`` is created ``pending`` and waits for a slot
    (admitted after the commit).
    Spawning renews the task's lease. An identity given twice names one child.

    :param task_id: the spawning task run's id.
    :param celery_id: its current attempt's Celery id.
    :param retries: the Celery retry count of the execution spawning.
    :param name: the children's definition name.
    :param graph: the compiled definition.
    :param items: ``(data, key)`` of each child; ``key`` may be ``None``.
    :param lease: the task's lease in seconds (default ``WTFLOW_TASK_LEASE``).
    :returns: ``(child run id, created)`` of each item, in order.
    :raises InvalidStateError: when the attempt is no longer the running one.
    :raises SpawnConflictError: when a key names a child spawned with other
        data or another definition; nothing is spawned then.
    """
    workflow, task = orchestrator.lock_acting(
        task_id, celery_id, retries, lease, "spawn child workflows"
    )
    identities = [identity(name, data, key) for data, key in items]
    known = _spawned(task.id, {spawn_key for spawn_key, _ in identities})
    limit = concurrency.limit_of(name)
    index = db.session.execute(
        select(func.count()).where(WorkflowRun.parent_task_id == task.id)
    ).scalar_one()
    spawned, reused, inserts, waiting = [], {}, orchestrator.Inserts(), []
    for (data, key), (spawn_key, digest) in zip(items, identities):
        child = known.get(spawn_key)
        if child is not None:
            if spawn_key not in reused:
                reused[spawn_key] = _reusable(child, name, digest, key)
            elif child.spawn_digest != digest:
                _conflict(child, key)
            spawned.append((child.id, False))
            continue
        child, _ = orchestrator.create(
            uow,
            name,
            graph,
            data,
            created_by=workflow.created_by,
            parent={
                "root_id": workflow.root_id,
                "parent_id": workflow.id,
                "parent_task_id": task.id,
                "spawn_key": spawn_key,
                "spawn_digest": digest,
                "spawn_index": index,
                "concurrency_key": concurrency.key_of(name, data),
            },
            start=limit is None,
            checked=True,
            inserts=inserts,
        )
        index += 1
        known[spawn_key] = child
        reused[spawn_key] = None
        if limit is not None:
            waiting.append(child)
        spawned.append((child.id, True))
    inserts.execute()
    again = [child for child in reused.values() if child is not None]
    for start in range(0, len(again), _CHUNK):
        chunk = again[start : start + _CHUNK]
        orchestrator.reset_runs(uow, chunk)
        if limit is None:
            orchestrator.start_runs(uow, chunk)
        else:
            waiting.extend(chunk)
    for child in waiting:
        # The key's lock comes before any root lock: admit after the commit.
        concurrency.wait_for_slot(uow, child, limit[0], admit_after=True)
    return spawned


_CHUNK = 500
"""Spawn keys looked up, or children run again, per query (SQLite limits a
statement's parameters)."""


def _spawned(task_id, spawn_keys):
    """The children a task spawned under the given keys, by key."""
    keys, found = sorted(spawn_keys), {}
    for start in range(0, len(keys), _CHUNK):
        for child in WorkflowRun.query.filter(
            WorkflowRun.parent_task_id == task_id,
            WorkflowRun.spawn_key.in_(keys[start : start + _CHUNK]),
        ):
            found[child.spawn_key] = child
    return found


def _conflict(child, key):
    raise SpawnConflictError(
        f"Child workflow {child.id} was spawned with key {key!r} as {child.name!r} "
        "with other data; a key must always name the same definition and data."
    )


def _reusable(child, name, digest, key):
    """Check an existing child; return it when it must run again, else ``None``.

    A child that failed or was cancelled runs again; a pending child waits
    for a slot; a running or successful one is kept.
    """
    if child.name != name or child.spawn_digest != digest:
        _conflict(child, key)
    if child.status in (WorkflowStatus.FAILURE.value, WorkflowStatus.CANCELLED.value):
        return child
    return None


def join(uow, task_id, celery_id, retries, spec):
    """Put a running task in ``waiting`` until the children of ``spec`` finish.

    Completes (or fails) the task at once when they have finished already.

    :param spec: a :class:`Join`.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    locked = orchestrator._lock_running(task_id, celery_id, retries)
    if locked is None:
        return False
    workflow, task = locked
    task.status = TaskStatus.WAITING.value
    task.lease_expires_at = None
    task.joined = {
        "children": list(spec.children),
        "return_exceptions": spec.return_exceptions,
        "single": spec.single,
    }
    runs = _runs(spec.children)
    failed = [r for r in runs if _failed(r)]
    unfinished = [r for r in runs if r.status not in TERMINAL]
    if failed and not spec.return_exceptions:
        _fail_join(uow, workflow, task, failed[0])
    elif not unfinished:
        _complete_join(uow, workflow, task, runs)
    else:
        task.remaining = len(unfinished)
        _show_progress(task)
        orchestrator.refresh_status(uow, workflow)
    return True


def child_changed(uow, child):
    """Tell the task joining ``child`` that it finished or runs again.

    Called under the root lock by the transaction that changes the child's
    status between finished and unfinished (a child that succeeds without
    it is counted by :func:`count_finished`). The counter is not versioned;
    the task's message and progress are, at most once per percent. The task
    is read and counted with Core statements; only the last child (or a
    failed one) loads it to complete (or fail) the join.
    """
    row = _lock_joining(child)
    if row.status != TaskStatus.WAITING.value or not row.member:
        return
    total = row.total
    if child.status not in TERMINAL:
        _count(row.id, total, row.remaining + 1, show=True)
        return
    if _failed(child) and not row.return_exceptions:
        task = orchestrator._lock_tasks(TaskRun.id == row.id)[0]
        _fail_join(uow, orchestrator.lock_workflow(child.parent_id), task, child)
        return
    if row.remaining > 1:
        _take_one_off(row)
        return
    task = orchestrator._lock_tasks(TaskRun.id == row.id)[0]
    task.remaining = 0
    runs = _runs(task.joined["children"])
    unfinished = [r for r in runs if r.status not in TERMINAL]
    if unfinished:  # pragma: no cover - the counter is kept under the root lock
        logger.error("Join counter of task %s drifted; recounting.", task.id)
        task.remaining = len(unfinished)
        return
    _complete_join(uow, orchestrator.lock_workflow(child.parent_id), task, runs)


def count_finished(child):
    """Count a child that succeeded on its joining task, unless it is the last.

    For a success recorded without the root lock (see
    :func:`~invenio_wtflow.engine.orchestrator.finish_child_shared`): the
    joining task's row lock orders the children's counts.

    :param child: the child run, with its ``id`` and ``parent_task_id``.
    :returns: ``False`` when the child is the last one its task joins: the
        join must be completed under the root lock.
    """
    row = _lock_joining(child)
    if row.status != TaskStatus.WAITING.value or not row.member:
        return True
    if row.remaining <= 1:
        return False
    _take_one_off(row)
    return True


def _take_one_off(row):
    """Take one finished child off a joining task's counter (not the last)."""
    done = row.total - row.remaining + 1
    show = row.total <= 100 or done * 100 // row.total != (done - 1) * 100 // row.total
    _count(row.id, row.total, row.remaining - 1, show)


@dataclass(frozen=True)
class _Joining:
    """The task joining a child, as a child's change needs it."""

    id: object
    status: str
    remaining: int
    member: bool
    total: int
    return_exceptions: bool


def _lock_joining(child):
    """Lock the task that spawned ``child``; read what it joins about the child.

    On PostgreSQL the database answers whether the child is joined and how
    many are, rather than sending the list of the joined children's ids.
    """
    params = {"task_id": child.parent_task_id}
    if db.session.get_bind().dialect.name == "postgresql":
        statement = statements.lock_joining_task_jsonb()
        row = prepared.execute(
            db.session, statement, {**params, "child_id": str(child.id)}
        ).one()
        return _Joining(*row)
    row = db.session.execute(statements.lock_joining_task(), params).one()
    joined = row.joined or {}
    children = joined.get("children", ())
    return _Joining(
        row.id,
        row.status,
        row.remaining,
        str(child.id) in children,
        len(children),
        bool(joined.get("return_exceptions")),
    )


def _failed(run):
    return run.status in (WorkflowStatus.FAILURE.value, WorkflowStatus.CANCELLED.value)


def _runs(ids):
    """Load runs by id, in the order given."""
    by_id = {
        str(run.id): run
        for run in WorkflowRun.query.filter(WorkflowRun.id.in_(list(ids))).all()
    }
    return [by_id[str(i)] for i in ids]


def _progress(total, remaining):
    """The message and progress of a task joining ``total`` children."""
    done = total - remaining
    message = f"Waiting for child workflows: {done} of {total} finished."
    return {"message": message, "progress": done / total if total else 1.0}


def _show_progress(task):
    progress = _progress(len(task.joined["children"]), task.remaining)
    for key, value in progress.items():
        setattr(task, key, value)


def _count(task_id, total, remaining, show):
    """Store a waiting task's join counter, and its progress when ``show``.

    One ``UPDATE`` rather than an ORM flush (Continuum's bookkeeping would be
    most of a finishing child's cost); the counter is not versioned, the
    progress is, at the commit. A loaded copy of the task is given the
    stored values.
    """
    values = {"remaining": remaining, "updated": utcnow()}
    if show:
        values.update(_progress(total, remaining))
    prepared.execute(
        db.session, statements.join_counter(show), {"task_id": task_id, **values}
    )
    loaded = db.session.identity_map.get(identity_key(TaskRun, task_id))
    if loaded is not None:
        for key, value in values.items():
            set_committed_value(loaded, key, value)
    if show:
        versioning.changed(db.session, TaskRun, [task_id])


def _complete_join(uow, workflow, task, runs):
    """Record the children's results, in the joined order, as the task's result."""
    results = results_of(runs)
    values = [
        results[run.id] if run.status == WorkflowStatus.SUCCESS.value else error(run)
        for run in runs
    ]
    value = values[0] if task.joined["single"] else values
    task.message = f"Joined {len(runs)} child workflow(s)."
    orchestrator.complete(uow, workflow, task, value)


def _fail_join(uow, workflow, task, child):
    orchestrator.fail_task(
        uow,
        workflow,
        task,
        f"{CHILD_ERROR}: child workflow {child.name} {child.id} is {child.status}"
        + (f": {child.message}" if child.message else "."),
    )


def error(run):
    """The JSON value standing for a failed or cancelled child in a join result."""
    return {
        "exc_type": CHILD_ERROR,
        "exc_message": run.message or f"child workflow {run.status}",
        "workflow_id": str(run.id),
        "status": run.status,
    }


def results_of(runs):
    """Return ``{run id: result}`` of successful runs, as plain Celery gives it.

    Reads only the task results that make up each run's output (one query).
    """
    done = [r for r in runs if r.status == WorkflowStatus.SUCCESS.value]
    if not done:
        return {}
    grown = dynamic.callback_results([r for r in done if r.output is None])
    done = [r for r in done if r.output is not None]
    positions = {p for r in done for p in input_positions(r.output)}
    stored = defaultdict(dict)
    for workflow_id, position, result in db.session.execute(
        select(TaskRun.workflow_id, TaskRun.position, TaskRun.result).where(
            TaskRun.workflow_id.in_([r.id for r in done]),
            TaskRun.position.in_(positions),
        )
    ):
        stored[workflow_id][position] = result
    return {**grown, **{r.id: resolve(r.output, stored[r.id]) for r in done}}


def _live(criteria):
    """Lock and return the runs matching ``criteria`` that have unfinished tasks.

    A run's status can be final while some of its tasks still run (a failure
    beats a parallel branch still running): what must be stopped is decided
    by the tasks.
    """
    live = (
        select(TaskRun.workflow_id)
        .where(TaskRun.status.notin_([s.value for s in TERMINAL_TASKS]))
        .distinct()
    )
    return (
        WorkflowRun.query.filter(*criteria, WorkflowRun.id.in_(live))
        .order_by(WorkflowRun.id)
        .with_for_update()
        .all()
    )


def stop_children(uow, task_ids, reason):
    """Stop the child runs spawned by the given tasks that still have work.

    The runs below them are stopped with them, all in one batch (see
    :func:`~invenio_wtflow.engine.orchestrator.stop_runs`).

    :param task_ids: ids of the parent task runs.
    :param reason: message recorded on the cancelled tasks of each child.
    """
    runs = _live([WorkflowRun.parent_task_id.in_(list(task_ids))])
    if runs:
        orchestrator.stop_runs(uow, runs, reason)


def descendants(run_ids):
    """Return the ids of every run below the given runs, level by level."""
    found, frontier = [], list(run_ids)
    while frontier:
        frontier = list(
            db.session.execute(
                select(WorkflowRun.id).where(WorkflowRun.parent_id.in_(frontier))
            ).scalars()
        )
        found.extend(frontier)
    return found


def live_below(run_ids):
    """Lock and return every run below the given runs that still has work.

    However deep, ordered by primary key; a run below a finished one is
    included.
    """
    below = descendants(run_ids)
    return _live([WorkflowRun.id.in_(below)]) if below else []


def has_active(workflow_id):
    """Whether any run below a run still has unfinished tasks."""
    below = descendants([workflow_id])
    return (
        bool(below)
        and db.session.execute(
            select(TaskRun.id)
            .where(
                TaskRun.workflow_id.in_(below),
                TaskRun.status.notin_([s.value for s in TERMINAL_TASKS]),
            )
            .limit(1)
        ).first()
        is not None
    )
