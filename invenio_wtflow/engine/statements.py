# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The hot path's SQL statements, built once with bound parameters.

Building a Core statement costs more than running a cached one (about
0.2 ms for the claim's ``UPDATE``); every attempt runs these, so each is
built on first use and its values are passed as parameters. The ``UPDATE``
statements name tables, not mapped classes: an ``UPDATE`` that mentions a
mapped class anywhere runs through the ORM's bulk update, at a cost.
"""

from functools import cache

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)

from ..models import TaskDependency, TaskRun, TaskStatus, WorkflowRun
from . import waiting

_TASKS = TaskRun.__table__
_EDGES = TaskDependency.__table__
_RUNS = WorkflowRun.__table__
_TIME = TaskRun.__table__.c.updated.type


def _now():
    """The bound ``now`` of a transition, typed for the timestamp columns."""
    return bindparam("now", type_=_TIME)


@cache
def claim():
    """``queued -> running`` for the expected attempt (see ``orchestrator.claim``).

    Parameters: ``task_id``, ``attempt_id``, ``delivery_retries``, ``now``,
    ``lease_end``. Returns the task's ``id``, ``workflow_id``, its run's
    ``root_id``, ``position``, ``name``, ``signature`` and its number of
    ``dependants``; ``data`` and ``upstream`` are ``NULL`` (not read; see
    :func:`.fused.claim`).
    """
    dependants = (
        select(func.count())
        .where(_EDGES.c.depends_on_id == _TASKS.c.id)
        .scalar_subquery()
    )
    root_id = (
        select(_RUNS.c.root_id)
        .where(_RUNS.c.id == _TASKS.c.workflow_id)
        .scalar_subquery()
    )
    retries = bindparam("delivery_retries", type_=_TASKS.c.retries.type)
    return (
        update(_TASKS)
        .where(
            _TASKS.c.id == bindparam("task_id"),
            _TASKS.c.celery_id == bindparam("attempt_id"),
            or_(
                and_(
                    _TASKS.c.status == TaskStatus.QUEUED.value,
                    _TASKS.c.retries <= retries,
                ),
                and_(
                    _TASKS.c.status == TaskStatus.RUNNING.value,
                    _TASKS.c.retries < retries,
                ),
            ),
        )
        .values(
            status=TaskStatus.RUNNING.value,
            retries=retries,
            started_at=_now(),
            lease_expires_at=bindparam("lease_end", type_=_TIME),
            updated=_now(),
        )
        .returning(
            _TASKS.c.id,
            _TASKS.c.workflow_id,
            root_id.label("root_id"),
            _TASKS.c.position,
            _TASKS.c.name,
            _TASKS.c.signature,
            dependants.label("dependants"),
            null().label("data"),
            null().label("upstream"),
        )
    )


@cache
def succeed():
    """``running -> success`` of the current attempt (see ``orchestrator.succeed``).

    Parameters: ``task_id``, ``attempt_id``, ``delivery_retries``, ``output``
    (the result), ``now``.
    """
    return (
        update(_TASKS)
        .where(
            _TASKS.c.id == bindparam("task_id"),
            _TASKS.c.celery_id == bindparam("attempt_id"),
            _TASKS.c.status == TaskStatus.RUNNING.value,
            _TASKS.c.retries == bindparam("delivery_retries"),
        )
        .values(
            status=TaskStatus.SUCCESS.value,
            lease_expires_at=None,
            result=bindparam("output", type_=_TASKS.c.result.type),
            progress=1.0,
            finished_at=_now(),
            updated=_now(),
        )
        .returning(_TASKS.c.id, _TASKS.c.kind)
    )


@cache
def set_run_status(finished, notify=False):
    """Store run ``workflow_id``'s ``status``, ``message`` and ``finished_at``.

    Parameters: ``workflow_id``, ``status``, ``message``, ``now`` (also the
    new ``finished_at`` when ``finished``). A finished run gives up its
    request for a concurrency slot. With ``notify`` (PostgreSQL), the
    statement also sends the run's id and new status on ``channel`` and on
    the run's own channel, as ``"<id> <status>"`` (see
    :func:`.waiting.notifies`).
    """
    values = {
        "status": bindparam("status"),
        "message": bindparam("message", type_=_RUNS.c.message.type),
        "finished_at": _now() if finished else None,
        "updated": _now(),
    }
    if finished:
        values["slot_requested_at"] = None
    statement = (
        update(_RUNS)
        .where(_RUNS.c.id == bindparam("workflow_id", type_=_RUNS.c.id.type))
        .values(**values)
    )
    if notify:
        payload = cast(_RUNS.c.id, Text).concat(literal_column("' '", Text))
        payload = payload.concat(_RUNS.c.status)
        own = literal_column(waiting.run_channel_sql("wtflow_workflow.id"), Text)
        statement = statement.returning(
            func.pg_notify(bindparam("channel"), payload), func.pg_notify(own, payload)
        )
    return statement


@cache
def lock_joining_task():
    """Lock task ``task_id``; return its id, status, ``remaining`` and ``joined``."""
    return (
        select(_TASKS.c.id, _TASKS.c.status, _TASKS.c.remaining, _TASKS.c.joined)
        .where(_TASKS.c.id == bindparam("task_id"))
        .with_for_update()
    )


@cache
def lock_joining_task_jsonb():
    """:func:`lock_joining_task`, reading in ``joined`` what a child needs (PostgreSQL).

    Parameters: ``task_id``, ``child_id``. Returns the task's ``id``,
    ``status`` and ``remaining``, whether ``child_id`` is one of the children
    it joins (``member``), how many it joins (``total``) and
    ``return_exceptions``: not the list of the children's ids, which a
    thousand children would each read whole.
    """
    return (
        text(
            "SELECT id, status, remaining, "
            "coalesce((joined -> 'children') ? :child_id, false) AS member, "
            "coalesce(jsonb_array_length(joined -> 'children'), 0) AS total, "
            "coalesce((joined ->> 'return_exceptions')::boolean, false) "
            "AS return_exceptions "
            "FROM wtflow_task WHERE id = :task_id FOR UPDATE"
        )
        .bindparams(bindparam("task_id", type_=_TASKS.c.id.type), bindparam("child_id"))
        .columns(id=_TASKS.c.id.type)
    )


@cache
def join_counter(progress):
    """Store the counter of unfinished children of a joining task.

    Parameters: ``task_id``, ``remaining``, ``updated``; with ``progress``,
    also its ``message`` and ``progress``.
    """
    values = {
        "remaining": bindparam("remaining", type_=_TASKS.c.remaining.type),
        "updated": bindparam("updated", type_=_TIME),
    }
    if progress:
        values["message"] = bindparam("message", type_=_TASKS.c.message.type)
        values["progress"] = bindparam("progress", type_=_TASKS.c.progress.type)
    return update(_TASKS).where(_TASKS.c.id == bindparam("task_id")).values(**values)


@cache
def release_dependants():
    """Decrement the counter of the pending dependants of ``upstream_id``.

    Returns each dependant's ``id``, new ``remaining``, ``kind``, ``name``,
    ``status``, ``celery_id`` and ``signature``; those at zero are ready.
    The signature of one still waiting is ``NULL``: nothing reads it (a
    join's members would decode it once each). ``waiting`` is ``NULL`` (not
    read; see :func:`.fused.succeed`).
    """
    dependants = select(_EDGES.c.task_id).where(
        _EDGES.c.depends_on_id == bindparam("upstream_id")
    )
    return (
        update(_TASKS)
        .where(
            _TASKS.c.id.in_(dependants),
            _TASKS.c.status == TaskStatus.PENDING.value,
        )
        .values(remaining=_TASKS.c.remaining - 1)
        .returning(
            _TASKS.c.id,
            _TASKS.c.remaining,
            _TASKS.c.kind,
            _TASKS.c.name,
            _TASKS.c.status,
            _TASKS.c.celery_id,
            case((_TASKS.c.remaining == 0, _TASKS.c.signature)).label("signature"),
            null().label("waiting"),
        )
    )


@cache
def queue():
    """A new attempt of a ready task, run with ``executemany``.

    Parameters: ``task_id``, ``attempt_id`` (its new Celery id), ``now``.
    """
    return (
        update(_TASKS)
        .where(_TASKS.c.id == bindparam("task_id"))
        .values(
            status=TaskStatus.QUEUED.value,
            attempt=_TASKS.c.attempt + 1,
            retries=0,
            celery_id=bindparam("attempt_id"),
            queued_at=_now(),
            started_at=None,
            finished_at=None,
            lease_expires_at=None,
            updated=_now(),
        )
    )


@cache
def status_counts():
    """The number of tasks of run ``workflow_id`` in each status."""
    return (
        select(_TASKS.c.status, func.count())
        .where(_TASKS.c.workflow_id == bindparam("workflow_id"))
        .group_by(_TASKS.c.status)
    )


@cache
def status_counts_of_runs():
    """``(workflow_id, status, count)`` of the tasks of the runs ``ids``."""
    return (
        select(_TASKS.c.workflow_id, _TASKS.c.status, func.count())
        .where(_TASKS.c.workflow_id.in_(bindparam("ids", expanding=True)))
        .group_by(_TASKS.c.workflow_id, _TASKS.c.status)
    )


@cache
def waiting_in_run():
    """Whether run ``workflow_id`` has a task ``waiting``."""
    return select(
        exists().where(
            _TASKS.c.workflow_id == bindparam("workflow_id"),
            _TASKS.c.status == TaskStatus.WAITING.value,
        )
    )


@cache
def lock_runs(by_task, shared=False, rows=False):
    """Lock a run and the root of its tree, root first (see ``lock_workflow``).

    Parameter: ``task_id`` (a task of the run) when ``by_task``, else
    ``workflow_id``. Returns the ORM objects, or with ``rows`` the ``id``,
    ``status``, ``name``, ``parent_task_id`` and ``concurrency_key`` of each
    run only; with ``shared`` (which implies ``rows``) they are locked
    ``FOR KEY SHARE`` (these locks do not exclude each other) instead of
    ``FOR UPDATE``.
    """
    if by_task:
        target = (
            select(_TASKS.c.workflow_id)
            .where(_TASKS.c.id == bindparam("task_id", type_=_TASKS.c.id.type))
            .scalar_subquery()
        )
    else:
        target = bindparam("workflow_id", type_=_RUNS.c.id.type)
    run = _RUNS.alias()
    root_id = select(run.c.root_id).where(run.c.id == target).scalar_subquery()
    return _locked_runs(target, root_id, shared, rows)


@cache
def lock_run_and_root(shared=False, rows=False):
    """:func:`lock_runs` of run ``workflow_id`` whose root, ``root_id``, is known.

    Its plan is a lookup of two keys, where :func:`lock_runs` finds the root
    first.
    """
    target = bindparam("workflow_id", type_=_RUNS.c.id.type)
    root_id = bindparam("root_id", type_=_RUNS.c.id.type)
    return _locked_runs(target, root_id, shared, rows)


@cache
def lock_root(shared=False, rows=False):
    """:func:`lock_run_and_root` of a run that is its own root, ``root_id``.

    One key: the generic plan of the two keys' ``OR`` scans a small table
    (PostgreSQL prepares it once its custom plans cost no less), where one
    key's is a lookup whatever the table's size.
    """
    root_id = bindparam("root_id", type_=_RUNS.c.id.type)
    return (
        _selected_runs(rows or shared)
        .where(_RUNS.c.id == root_id)
        .with_for_update(read=shared, key_share=shared)
    )


def _locked_runs(target, root_id, shared, rows):
    """Select and lock runs ``target`` and ``root_id``, the root first."""
    return (
        _selected_runs(shared or rows)
        .where(or_(_RUNS.c.id == target, _RUNS.c.id == root_id))
        .order_by(case((_RUNS.c.id == root_id, 0), else_=1))
        .with_for_update(read=shared, key_share=shared)
    )


def _selected_runs(rows):
    """``SELECT`` of the runs to lock: the ORM objects, or the columns of ``rows``."""
    if rows:
        return select(
            _RUNS.c.id,
            _RUNS.c.status,
            _RUNS.c.name,
            _RUNS.c.parent_task_id,
            _RUNS.c.concurrency_key,
        )
    return select(WorkflowRun).execution_options(populate_existing=True)
