# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Readiness, joins, failure propagation, stop and restart.

Every function that changes the graph takes the lock on the root workflow row
first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers),
then the task rows it changes, ordered by primary key. The hot path's
transitions (claim, success, queueing what it makes ready) are conditional
``UPDATE ... RETURNING`` statements, and a run's status one ``UPDATE``,
whose version rows :mod:`~invenio_wtflow.engine.versioning` writes in the
same transaction; the others go through the ORM, which SQLAlchemy-Continuum
versions. A transition whose precondition does not hold (a duplicate or
stale delivery) changes nothing.
Joins use an atomic counter: the transaction that turns a task ``success``
decrements ``remaining`` on its dependants with ``UPDATE ... RETURNING`` and
queues exactly those that reach zero.

A success that provably leaves its run ``running`` (see
:func:`succeed_shared`) holds the root ``FOR KEY SHARE`` instead: graph and
status changes still exclude it, but the members of a wide group finish
side by side, meeting only on their join's counter row. So does the success
that finishes a child run which is not the last its task joins (see
:func:`finish_child_shared`): the only status change made without the root
lock, ``running -> success`` of a run whose tasks have all succeeded.

None of these functions commits: they take an
:class:`invenio_db.uow.UnitOfWork` (:func:`atomic` gives them an
:class:`EngineUnitOfWork`), and publishing happens after its commit.
"""

import copy
import logging
import time
import uuid
from collections import defaultdict
from datetime import timedelta

from flask import current_app
from invenio_db import db
from invenio_db.uow import UnitOfWork
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import make_transient_to_detached, scoped_session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.util import identity_key

from ..errors import InvalidStateError, TaskNotFoundError, WorkflowNotFoundError
from ..models import (
    ACTIVE_TASK_STATUSES,
    TERMINAL_TASK_STATUSES,
    NodeKind,
    TaskDependency,
    TaskRun,
    TaskStatus,
    WorkflowRun,
    WorkflowStatus,
    utcnow,
)
from . import (
    children,
    concurrency,
    dynamic,
    fused,
    prepared,
    sqlite,
    statements,
    versioning,
    waiting,
)
from .dispatch import Message, dispatcher
from .graph import input_positions
from .status import default_status

logger = logging.getLogger(__name__)

PENDING, QUEUED, RUNNING = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING
WAITING = TaskStatus.WAITING
SUCCESS, FAILURE, CANCELLED = (
    TaskStatus.SUCCESS,
    TaskStatus.FAILURE,
    TaskStatus.CANCELLED,
)


def _is_transient(exc):
    """Whether a database error is worth retrying in a new transaction."""
    if isinstance(exc, StaleDataError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


class EngineUnitOfWork(UnitOfWork):
    """A unit of work that runs in the session's own transaction.

    invenio-db's :class:`~invenio_db.uow.UnitOfWork` opens a ``SAVEPOINT`` on
    entry, and SQLAlchemy-Continuum's version session a second one: three
    extra statements per transaction, for nothing, since the engine owns the
    transaction and its commit (``session.commit()`` commits the outermost
    transaction) and its rollback (``session.rollback()`` rolls it all back)
    act on the whole transaction anyway. Registered operations run exactly
    as in the parent class: after the commit, or after the rollback.
    """

    retried = False
    """Whether an earlier try of the same transaction failed (see :func:`atomic`)."""

    def __enter__(self):
        """Enter without a savepoint; the transaction begins at the first statement."""
        return self

    def commit(self):
        """Commit, then run the operations; with no transaction begun, only run them.

        Statements sent alone (see :func:`~invenio_wtflow.engine.prepared.alone`)
        leave the session without a transaction: committing it would begin
        and commit an empty one, with every listener of its events.
        """
        session = self.session
        if isinstance(session, scoped_session):
            session = session()
        if session.in_transaction():
            return super().commit()
        for op in self._operations:
            op.on_commit(self)
        for op in self._operations:
            op.on_post_commit(self)
        self._mark_dirty()


def atomic(func_, *args, **kwargs):
    """Run ``func_(uow, *args, **kwargs)`` in a unit of work and commit it.

    Transient database errors (deadlock, serialization failure, locked SQLite
    database, lost connection, stale version) roll back and retry the whole
    function, up to ``WTFLOW_DB_RETRIES`` times, with ``uow.retried`` set.
    Post-commit operations run once, after the successful commit. A failed
    try may have committed (its ``COMMIT``'s answer lost, or a statement sent
    alone: see :func:`~invenio_wtflow.engine.prepared.alone`): the function
    must find what such a try left, as :func:`create_run` and :func:`claim`
    do.
    """
    retries = current_app.config["WTFLOW_DB_RETRIES"]
    for attempt in range(retries + 1):
        try:
            with sqlite.writer(), EngineUnitOfWork(db.session) as uow:
                uow.retried = attempt > 0
                result = func_(uow, *args, **kwargs)
                uow.commit()
            return result
        except (OperationalError, StaleDataError, DBAPIError) as exc:
            if not _is_transient(exc) or attempt == retries:
                raise
            logger.warning("Retrying transaction after transient error: %s", exc)
            db.session.rollback()
            time.sleep(min(2.0, 0.05 * 2**attempt))


#
# Locks and queries
#
def _run_and_root_lock(workflow_id, root_id, shared=False, rows=False):
    """``(statement, params)`` that lock run ``workflow_id`` and its root ``root_id``.

    A root run is one row, looked up by its one key (see
    :func:`~invenio_wtflow.engine.statements.lock_root`).
    """
    if str(workflow_id) == str(root_id):
        return statements.lock_root(shared, rows), {"root_id": root_id}
    statement = statements.lock_run_and_root(shared, rows)
    return statement, {"workflow_id": workflow_id, "root_id": root_id}


def lock_workflow(
    workflow_id=None, task_id=None, shared=False, root_id=None, as_row=False
):
    """Lock the root of a workflow's tree, then the workflow, and return it.

    One ``SELECT ... FOR UPDATE`` finds and locks both rows, the root first
    (PostgreSQL locks rows in the order the query returns them).

    :param workflow_id: id of the workflow run,
    :param task_id: or the id of one of its tasks.
    :param shared: take ``FOR KEY SHARE`` locks instead: they keep out every
        holder of ``FOR UPDATE`` (graph changes, status changes) but not each
        other (see :func:`succeed_shared`); implies ``as_row``.
    :param root_id: the id of the run's root, when known (with
        ``workflow_id``): the statement then looks up both by key.
    :param as_row: return the run as a row of its ``id``, ``status``,
        ``name``, ``parent_task_id`` and ``concurrency_key``, not loaded
        through the ORM (a prepared statement).
    :raises WorkflowNotFoundError: when there is no such run.
    :raises TaskNotFoundError: when there is no such task.
    """
    as_row = as_row or shared
    if task_id is not None:
        statement = statements.lock_runs(True, shared, as_row)
        params = {"task_id": task_id}
    elif root_id is not None:
        statement, params = _run_and_root_lock(workflow_id, root_id, shared, as_row)
    else:
        statement = statements.lock_runs(False, shared, as_row)
        params = {"workflow_id": workflow_id}
    if as_row:
        rows = prepared.execute(db.session, statement, params).all()
    else:
        rows = db.session.execute(statement, params).scalars().all()
    if not rows:
        if task_id is not None:
            raise TaskNotFoundError(task_id)
        raise WorkflowNotFoundError(workflow_id)
    return rows[-1]


def _lock_tasks(*criteria):
    """Lock and return the task rows matching ``criteria``, by primary key."""
    return (
        db.session.query(TaskRun)
        .filter(*criteria)
        .order_by(TaskRun.id)
        .with_for_update()
        .populate_existing()
        .all()
    )


def edges(workflow_id):
    """Return ``(dependants, dependencies)`` maps of task ids of a workflow."""
    rows = db.session.execute(
        select(TaskDependency.task_id, TaskDependency.depends_on_id)
        .join(TaskRun, TaskRun.id == TaskDependency.task_id)
        .where(TaskRun.workflow_id == workflow_id)
    ).all()
    dependants, dependencies = defaultdict(set), defaultdict(set)
    for task_id, depends_on_id in rows:
        dependants[depends_on_id].add(task_id)
        dependencies[task_id].add(depends_on_id)
    return dependants, dependencies


def downstream_of(task_ids, dependants):
    """Return every task reachable from ``task_ids`` (excluding them)."""
    seen, stack = set(), list(task_ids)
    while stack:
        for child in dependants.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen - set(task_ids)


#
# Transitions
#
def _queue(uow, tasks):
    """Mark tasks ``queued`` with a fresh attempt and publish after commit.

    A node the orchestrator runs itself (``populate``, a callback) gets no
    Celery id: its root is asked for an orchestrator pass instead.
    """
    values = _new_attempt(utcnow())
    op = dispatcher(uow)
    roots = {}
    for task in tasks:
        for column, value in values.items():
            setattr(task, column, value)
        task.attempt += 1
        if task.kind is None:
            task.celery_id = str(uuid.uuid4())
            op.messages.append(Message.for_task(task))
            continue
        task.celery_id = None
        root_id = db.session.get(WorkflowRun, task.workflow_id).root_id
        roots.setdefault(root_id, db.session.get(WorkflowRun, root_id))
    if roots:
        dynamic.request(uow, roots.values())


def _new_attempt(now):
    """What a task's row gets when a new attempt is queued, but its ids."""
    return {
        "status": QUEUED.value,
        "retries": 0,
        "queued_at": now,
        "started_at": None,
        "finished_at": None,
        "lease_expires_at": None,
    }


def _reset(task, remaining):
    """Put a task back to ``pending`` for a new attempt."""
    task.status = PENDING.value
    task.remaining = remaining
    task.celery_id = None
    task.retries = 0
    task.message = task.error = task.traceback = None
    task.progress = task.result = None
    task.queued_at = task.started_at = task.finished_at = None
    task.lease_expires_at = None
    task.joined = None


def _cancel(uow, tasks, reason):
    """Cancel non-terminal tasks, revoking their attempts after commit.

    The child workflows an active task spawned are stopped with it.
    """
    active = _cancel_tasks(uow, tasks, reason)
    if active:
        children.stop_children(uow, active, "Cancelled: its parent task was cancelled.")


def _cancel_tasks(uow, tasks, reason):
    """Cancel non-terminal tasks, revoking their attempts after commit.

    :returns: the ids of those that were active (their children still run).
    """
    now = utcnow()
    op = dispatcher(uow)
    active = []
    for task in tasks:
        if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
            continue
        if TaskStatus(task.status) in ACTIVE_TASK_STATUSES:
            if task.celery_id is not None:
                op.revoked.append(task.celery_id)
            active.append(task.id)
        task.status = CANCELLED.value
        task.message = reason
        task.finished_at = now
    return active


def refresh_status(uow, workflow, message=None, counts=None, tell_parent=True):
    """Recompute and store a workflow's status from its tasks' statuses.

    The rule is :func:`~invenio_wtflow.engine.status.default_status`, or the
    ``compute_status`` method of the definition class registered under the
    run's name. A child run that finishes (or runs again) tells the task
    joining it.

    :param uow: the unit of work.
    :param workflow: the locked :class:`~invenio_wtflow.models.WorkflowRun`
        (or its row, when its definition follows the default rule).
    :param message: reason to record when the status changes.
    :param counts: the run's tasks by status, when the caller counted them
        with its last change (see :func:`~invenio_wtflow.engine.fused.succeed`).
    :param tell_parent: see :func:`set_status`.
    """
    if counts is None:
        db.session.flush()
        counts = dict(
            db.session.execute(
                statements.status_counts(), {"workflow_id": workflow.id}
            ).all()
        )
    status = WorkflowStatus(status_rule(workflow)(counts))
    if status.value != workflow.status:
        set_status(uow, workflow, status, message, tell_parent)
    return status


def refresh_statuses(uow, runs, message=None, tell_parent=True):
    """:func:`refresh_status` of many locked runs: one flush, one count for all.

    :param runs: the locked runs.
    :param message: reason to record on each run whose status changes.
    :param tell_parent: see :func:`set_status`.
    """
    db.session.flush()
    counts = defaultdict(dict)
    for workflow_id, status, count in db.session.execute(
        statements.status_counts_of_runs(), {"ids": [run.id for run in runs]}
    ):
        counts[workflow_id][status] = count
    for run in runs:
        refresh_status(uow, run, message, counts[run.id], tell_parent)


def set_status(uow, workflow, status, message=None, tell_parent=True):
    """Store a run's status; a child tells its parent task when it settles.

    :param uow: the unit of work.
    :param workflow: the locked :class:`~invenio_wtflow.models.WorkflowRun`
        (or its row, when its definition follows the default rule).
    :param status: the new :class:`~invenio_wtflow.models.WorkflowStatus`.
    :param message: reason for the change.
    :param tell_parent: ``False`` when the caller knows the child's parent
        task has finished (it would ignore the news).
    """
    was_terminal = WorkflowStatus(workflow.status).is_terminal
    _store_status(workflow, status, message)
    if status.is_terminal:
        if concurrency.limit_of(workflow.name) is not None:
            # A slot is free: admit the next run of the key after the commit.
            concurrency.admission(uow).keys.add(
                (workflow.name, workflow.concurrency_key)
            )
    if (
        tell_parent
        and workflow.parent_task_id is not None
        and was_terminal != status.is_terminal
    ):
        children.child_changed(uow, workflow)


def _store_status(workflow, status, message):
    """Write a locked run's status with one ``UPDATE``, versioned at the commit.

    Not an ORM flush: that would make Continuum build its transaction and
    version objects in Python, the largest cost of a run that finishes. The
    loaded object is given the stored values, as if it had been flushed.

    :param workflow: the run, loaded or as a row of its ``id`` (and more).
    """
    workflow_id, now = workflow.id, utcnow()
    values = _status_values(status, message, now)
    notify = status.is_terminal and waiting.notifies(db.session)
    prepared.execute(
        db.session,
        statements.set_run_status(status.is_terminal, notify),
        {
            "workflow_id": workflow_id,
            "status": status.value,
            "message": message,
            "now": now,
            **({"channel": waiting.CHANNEL} if notify else {}),
        },
    )
    _show_status(workflow, values)
    versioning.changed(db.session, WorkflowRun, [workflow_id])


def _status_values(status, message, now):
    """The columns a run's new ``status`` sets (see :func:`_store_status`)."""
    values = {
        "status": status.value,
        "message": message,
        "finished_at": now if status.is_terminal else None,
        "updated": now,
    }
    if status.is_terminal:
        values["slot_requested_at"] = None
    return values


def _show_status(workflow, values):
    """Give a run the stored status ``values``, if the session holds it loaded.

    :param workflow: the run, loaded, or its row or id.
    """
    if not isinstance(workflow, WorkflowRun):
        loaded = db.session.identity_map
        if not loaded:  # a worker's session, as a task's success finds it
            return
        workflow_id = uuid.UUID(str(getattr(workflow, "id", workflow)))
        workflow = loaded.get(identity_key(WorkflowRun, workflow_id))
    if workflow is not None:
        for key, value in values.items():
            set_committed_value(workflow, key, value)


def _workflow_class(workflow):
    """The definition class registered under a run's name, if any."""
    return _class_named(workflow.name)


def _class_named(name):
    """The definition class registered under ``name``, if any."""
    ext = current_app.extensions.get("invenio-wtflow")
    return ext.workflow_class(name) if ext else None


def status_rule(workflow):
    """Return the status rule of a run's definition (or the default rule).

    Only a definition with its own ``compute_status`` is given the run,
    which must then be loaded (not a row, see :func:`lock_workflow`).
    """
    cls = _workflow_class(workflow)
    if _has_default_rule(cls):
        return default_status
    return cls(workflow).compute_status


def _has_default_rule(cls):
    """Whether a definition class (or none) keeps the default status rule."""
    rule = getattr(cls, "compute_status", None)
    return cls is None or getattr(rule, "is_default_rule", False)


class Inserts:
    """Rows of new runs gathered to be inserted together (see :func:`create`).

    Spawning many children inserts them with one ``executemany`` per table
    instead of two statements per child.
    """

    def __init__(self):
        """Start with no rows."""
        self.runs, self.tasks, self.edges = [], [], []

    def execute(self):
        """Insert the rows gathered so far, versioned at the commit; forget them."""
        versioning.insert(db.session, WorkflowRun, self.runs)
        versioning.insert(db.session, TaskRun, self.tasks)
        if self.edges:
            db.session.execute(TaskDependency.__table__.insert(), self.edges)
        self.runs, self.tasks, self.edges = [], [], []


def create(
    uow,
    name,
    graph,
    data,
    key=None,
    created_by=None,
    parent=None,
    start=False,
    checked=False,
    alone=False,
    inserts=None,
    workflow_id=None,
    attach=True,
):
    """Insert a workflow run with all its tasks ``pending`` and their edges.

    :param parent: for a child run, the columns linking it to its parent
        (``root_id``, ``parent_id``, ``parent_task_id``, ``spawn_key``, ...).
    :param start: insert the run already started: the tasks with no upstream
        ``queued`` (published after commit), as :func:`start` would leave
        them, without updating the rows just inserted.
    :param checked: the caller found no run with this ``key`` (or
        ``spawn_key``) and holds the locks that keep a concurrent one out
        (a spawning task holds its root's lock and its attempt).
    :param alone: nothing else changes in this transaction: on PostgreSQL
        a root run without a ``key`` (and not started with nodes of the
        orchestrator's) is inserted and versioned by one statement (see
        :func:`~invenio_wtflow.engine.fused.create`), sent in autocommit
        mode on a connection of its own when the session has begun no
        transaction: it is committed before the unit of work commits.
    :param inserts: an :class:`Inserts` that gathers the new rows, for the
        caller to insert with other runs' (before anything reads or changes
        them); only for a run that cannot collide with another (``checked``,
        or without ``key`` and ``parent``).
    :param workflow_id: the new run's id (default: a new one). Given by a
        caller that retries the transaction, it is the same in every try:
        a run inserted ``alone`` commits as its statement ends, and a try
        whose answer was lost must not be inserted twice (see
        :func:`~invenio_wtflow.engine.fused.create`).
    :param attach: add a run inserted at once to the session (see
        :func:`known`); when false, the caller gets it unattached, with
        nothing but its ``id``, and attaches it when it needs to.
    :returns: ``(run, created)``; with a ``key`` (or a child's ``spawn_key``)
        that already exists, the existing run and ``False``.
    """
    if inserts is not None and not (checked or (key is None and parent is None)):
        raise ValueError("Only runs that cannot collide are inserted together.")
    existing = None if checked else _existing(name, key, parent)
    if existing is not None:
        return existing, False
    workflow_id = workflow_id or uuid.uuid4()
    now = utcnow()
    row = {
        **_EMPTY_RUN,
        "id": workflow_id,
        "root_id": workflow_id,
        "name": name,
        "key": key,
        "data": data if data is not None else {},
        "status": WorkflowStatus.PENDING.value,
        "output": copy.deepcopy(graph.output),  # the graph may be shared
        "created_by": created_by,
        "started_at": now if start else None,
        "orchestration_requests": 0,
        "orchestrations": 0,
        "version_id": 1,
        "created": now,
        "updated": now,
        **(parent or {}),
    }
    # A started node of the orchestrator's would change the run's row (see
    # ``_queue``) after the statement that inserts and versions it.
    at_once = (
        alone
        and key is None
        and parent is None
        and not (start and any(node.kind for node in graph.nodes))
        and fused.available(db.session)
    )
    # Inserted at once, the run is read by nothing before the commit, which
    # expires its attributes: the session knows it by its identity alone
    # (what it lacks loads when first used), not built from ~30 values, and
    # only once the caller uses it (``attach``).
    light = at_once and _has_default_rule(_class_named(name))
    workflow = WorkflowRun(id=workflow_id) if light else WorkflowRun(**row)
    if start:
        ready = sum(1 for node in graph.nodes if not node.depends_on)
        counts = {QUEUED.value: ready, PENDING.value: len(graph.nodes) - ready}
        rule = default_status if light else status_rule(workflow)
        row["status"] = WorkflowStatus(rule(counts)).value
        if not light:
            workflow.status = row["status"]
    if at_once:
        pass  # inserted with its tasks, below
    elif inserts is not None:
        inserts.runs.append(row)
    elif checked or (key is None and parent is None):
        versioning.insert(db.session, WorkflowRun, [row])  # nothing to collide with
    else:
        try:
            with db.session.begin_nested():
                versioning.insert(db.session, WorkflowRun, [row])
        except IntegrityError:
            # A concurrent call inserted the same key first: the constraint decides.
            existing = _existing(name, key, parent)
            if existing is None:
                raise
            return existing, False
    if not at_once:
        workflow = known(workflow)
    ids = [uuid.uuid4() for _ in graph.nodes]
    now = utcnow()
    rows = [
        {
            **_EMPTY_TASK,
            "id": ids[node.position],
            "workflow_id": workflow_id,
            "position": node.position,
            "name": node.name,
            "signature": node.signature,
            "status": PENDING.value,
            "attempt": 0,
            "retries": 0,
            "remaining": len(node.depends_on),
            "kind": node.kind,
            "node_key": node.key,
            "created": now,
            "updated": now,
        }
        for node in graph.nodes
    ]
    if start:
        _queue_rows(uow, [task for task in rows if task["remaining"] == 0])
    edges = [
        {"task_id": ids[node.position], "depends_on_id": ids[dep]}
        for node in graph.nodes
        for dep in node.depends_on
    ]
    if at_once:
        # One round trip, no BEGIN and no COMMIT, before the session begins.
        if not fused.create(db.session, row, rows, edges, published=start):
            _publish_committed(uow, workflow_id)
        shell = workflow if light else WorkflowRun(id=workflow_id)
        return (known(shell) if attach else shell), True
    pending = Inserts() if inserts is None else inserts
    pending.tasks.extend(rows)
    pending.edges.extend(edges)
    if inserts is None:
        pending.execute()
    return workflow, True


_EMPTY_RUN = dict.fromkeys(WorkflowRun.__table__.columns.keys())
"""A run's row with every column ``None``, that :func:`create` fills."""

_EMPTY_TASK = dict.fromkeys(TaskRun.__table__.columns.keys())
"""A task's row with every column ``None``, that :func:`create` fills."""

_QUEUED_COLUMNS = (
    "status",
    "attempt",
    "retries",
    "queued_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
    "celery_id",
)
"""The columns ``_queue`` sets."""


def known(workflow):
    """The inserted run, known to the session without reading it back.

    What the run holds is taken as committed; what it lacks is read when
    first used. The session's own run of the same id, if it has one (a
    retried try of the transaction finds the one an earlier try left there),
    is returned instead.

    :param workflow: a transient :class:`~invenio_wtflow.models.WorkflowRun`
        whose row is inserted.
    """
    key = identity_key(WorkflowRun, workflow.id)
    found = db.session.identity_map.get(key)
    if found is not None:
        return found
    make_transient_to_detached(workflow)
    db.session.add(workflow)
    return workflow


def _publish_committed(uow, workflow_id):
    """Publish, instead of this try's, the first attempts of a run committed earlier.

    A run inserted at once commits as its statement ends: when the answer
    was lost and the transaction retried (with the same run id), the retry
    inserts nothing, and the tasks to publish are the ones the first try
    committed ``queued`` (nothing else is in this transaction: see
    :func:`~invenio_wtflow.engine.prepared.alone`).
    """
    rows = db.session.execute(
        select(TaskRun.id, TaskRun.celery_id, TaskRun.name, TaskRun.signature).where(
            TaskRun.workflow_id == workflow_id, TaskRun.status == QUEUED.value
        )
    ).all()
    dispatcher(uow).messages[:] = [Message.for_attempt(*row) for row in rows]


def create_run(
    uow,
    name,
    graph,
    data,
    key=None,
    created_by=None,
    started=False,
    workflow_id=None,
    attach=True,
):
    """Insert a root run (see :func:`create`), and start it if asked to.

    A started run is inserted with its first tasks already ``queued``, unless
    its definition limits concurrent runs (``max_runs``): then it is inserted
    ``pending`` and :func:`start` waits for a slot, in the same transaction.

    :param started: start the new run.
    :param workflow_id: the new run's id, the same in every try of the
        transaction (see :func:`create`): a retry that finds the run an
        earlier try committed returns it, and publishes its queued tasks.
    :param attach: see :func:`create`.
    :returns: ``(run, created)``; an existing run (same ``key``) is not started.
    """
    if workflow_id is not None and getattr(uow, "retried", False):
        committed = db.session.get(WorkflowRun, workflow_id)
        if committed is not None:  # an earlier try committed; its answer was lost
            _publish_committed(uow, workflow_id)
            return committed, True
    at_once = started and concurrency.limit_of(name) is None
    run, created = create(
        uow,
        name,
        graph,
        data,
        key=key,
        created_by=created_by,
        start=at_once,
        alone=at_once or not started,
        workflow_id=workflow_id,
        attach=attach,
    )
    if started and created and not at_once:
        run = start(uow, run.id)
    return run, created


def _queue_rows(uow, rows):
    """Queue tasks not inserted yet, given as rows (see :func:`_queue`)."""
    nodes = [row for row in rows if row["kind"] is not None]
    if nodes:  # their roots are asked for a pass: through the ORM's rows
        tasks = [TaskRun(**row) for row in nodes]  # transient: never added
        _queue(uow, tasks)
        for row, task in zip(nodes, tasks):
            row.update((column, getattr(task, column)) for column in _QUEUED_COLUMNS)
    values = _new_attempt(utcnow())
    messages = dispatcher(uow).messages
    for row in rows:
        if row["kind"] is not None:
            continue
        row.update(values, attempt=row["attempt"] + 1, celery_id=str(uuid.uuid4()))
        messages.append(
            Message.for_attempt(
                row["id"], row["celery_id"], row["name"], row["signature"]
            )
        )


def _existing(name, key, parent):
    """The run a keyed creation would duplicate, if any."""
    if parent is not None:
        return WorkflowRun.query.filter_by(
            parent_task_id=parent["parent_task_id"], spawn_key=parent["spawn_key"]
        ).one_or_none()
    if key is not None:
        return WorkflowRun.query.filter_by(name=name, key=key).one_or_none()
    return None


def start(uow, workflow_id, data=None):
    """Merge ``data`` into a pending run and queue the tasks with no upstream.

    A run of a definition with ``max_runs`` whose key has no free slot stays
    ``pending`` and starts when one frees (see
    :mod:`~invenio_wtflow.engine.concurrency`).

    :raises InvalidStateError: when the run is not ``pending``, or already
        waiting for a slot.
    """
    limit = concurrency.lock_for(workflow_id, data)
    workflow = lock_workflow(workflow_id)
    if workflow.status != WorkflowStatus.PENDING.value:
        raise InvalidStateError(
            f"Workflow {workflow.id} is {workflow.status}; only a pending run can "
            "be started (use restart to run it again)."
        )
    if workflow.slot_requested_at is not None:
        raise InvalidStateError(
            f"Workflow {workflow.id} was started already and waits for a free slot."
        )
    if data:
        workflow.data = {**workflow.data, **data}
    if limit is not None:
        max_runs, _ = limit
        workflow.concurrency_key = concurrency.key_of(workflow.name, workflow.data)
        if not concurrency.has_slot(workflow, max_runs):
            # Admission after the commit starts the oldest waiting run when a
            # slot is free; this one if none is older.
            concurrency.wait_for_slot(uow, workflow, max_runs, admit_after=True)
            return workflow
    start_locked(uow, workflow)
    return workflow


def start_locked(uow, workflow):
    """Queue the tasks with no upstream of a locked, pending run."""
    start_runs(uow, [workflow])


def start_runs(uow, runs):
    """Queue the tasks with no upstream of locked, pending runs, in one batch.

    One query locks the tasks of every run and one flush queues them; they
    are published run by run, in the order given.
    """
    now, order = utcnow(), {}
    for run in runs:
        run.slot_requested_at = None
        run.message = None
        run.started_at = now
        order[run.id] = len(order)
    tasks = _lock_tasks(TaskRun.workflow_id.in_(list(order)), TaskRun.remaining == 0)
    _queue(uow, sorted(tasks, key=lambda t: (order[t.workflow_id], t.position)))
    refresh_statuses(uow, runs)


def claim(
    uow,
    task_id,
    celery_id,
    retries=0,
    lease=None,
    upstream=True,
    unflushed=False,
    flushed=False,
):
    """Move an attempt ``queued -> running`` and return the task's row, or ``None``.

    ``task.retries`` is the retry count the attempt expects next: a queued
    attempt is claimed by a delivery with at least that count, and a Celery
    retry (same Celery id, higher count) may claim a running attempt before
    the retry was recorded. Any other delivery (duplicate, older retry, stale
    attempt, stopped task) claims nothing.

    One conditional ``UPDATE ... RETURNING``, versioned at the commit (see
    :mod:`~invenio_wtflow.engine.versioning`); on PostgreSQL, one statement
    that versions it too and reads what the attempt's call needs (see
    :func:`~invenio_wtflow.engine.fused.claim`), committed as it ends when
    it begins its transaction (see :func:`~invenio_wtflow.engine.prepared.alone`).

    :param upstream: read the upstream results the task takes, if any, with
        the claim; ``False`` when the message says it takes none (see
        :data:`~invenio_wtflow.engine.dispatch.INPUT_HEADER`). A task that
        takes some reads them in :func:`inputs` all the same.
    :param unflushed: the message says that the commit that queued the
        attempt may not be flushed yet (see
        :data:`~invenio_wtflow.engine.dispatch.UNFLUSHED_HEADER`): a claim
        that commits unflushed (``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = False``)
        does so only once everything before it is flushed.
    :param flushed: wait for the flush, whatever
        ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT`` says (a claim taken again).
    :returns: a row with the task's ``id``, ``workflow_id``, ``position``,
        ``name``, ``signature`` and number of ``dependants``, and the
        ``data`` and ``upstream`` results read with it (on PostgreSQL, with
        the run's ``run_name`` too), or ``None``.
    """
    now = utcnow()
    params = {
        "task_id": task_id,
        "attempt_id": celery_id,
        "delivery_retries": retries,
        "now": now,
        "lease_end": _lease_end(lease, now),
    }
    if fused.available(db.session):
        synchronous = flushed or current_app.config["WTFLOW_CLAIM_SYNCHRONOUS_COMMIT"]
        if not synchronous and unflushed:
            synchronous = prepared.IF_CAUGHT_UP
        return fused.claim(
            db.session,
            params,
            alone=True,
            upstream=upstream,
            synchronous_commit=synchronous,
        )
    row = db.session.execute(statements.claim(), params).one_or_none()
    if row is not None:
        versioning.changed(db.session, TaskRun, [row.id])
    return row


def _lease_end(lease, now=None):
    """When a lease of ``lease`` seconds (or ``WTFLOW_TASK_LEASE``) ends."""
    seconds = lease or current_app.config["WTFLOW_TASK_LEASE"]
    return (now or utcnow()) + timedelta(seconds=seconds)


def _lost_claim(task, celery_id, retries):
    """Whether a task is as it was before a lost claim of ``(celery_id, retries)``.

    A claim committed without waiting for its flush
    (``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = False``) is forgotten by a crash of
    the database before the flush: the task is as before the claim while
    the body runs on, ``queued`` under the same attempt (or ``running`` for
    a lower retry count, when a Celery retry had claimed it before the
    retry was recorded). The claim's own condition: it matches nothing
    else, so no task stopped, restarted, retried or finished is taken.
    """
    if task.celery_id != celery_id:
        return False
    if task.status == QUEUED.value:
        return task.retries <= retries
    return task.status == RUNNING.value and task.retries < retries


def _current_attempt(task, celery_id, retries, statuses=(RUNNING,), lease=None):
    """Whether a locked task is still at the attempt ``(celery_id, retries)``.

    A task whose claim of that attempt was lost (see :func:`_lost_claim`) is
    claimed again in place first, with a lease of ``lease`` seconds (the
    callers that pass none set the lease themselves or end it).

    :param statuses: the statuses the attempt may be in.
    """
    if _lost_claim(task, celery_id, retries):
        _warn_lost_claim(task.id, task.celery_id)
        now = utcnow()
        task.status = RUNNING.value
        task.retries = retries
        task.started_at = now
        task.lease_expires_at = _lease_end(lease, now)
        return True
    return (
        task.celery_id == celery_id
        and task.status in {s.value for s in statuses}
        and task.retries == retries
    )


def _warn_lost_claim(task_id, celery_id):
    """Log that an attempt is claimed again, its claim lost."""
    logger.warning(
        "Attempt %s of task run %s was not running while its body ran: its claim "
        "was lost (a database crash before the claim was flushed?); claimed again.",
        celery_id,
        task_id,
    )


def workflow_data(workflow_id):
    """Return a run's data."""
    return db.session.execute(
        select(WorkflowRun.data).where(WorkflowRun.id == workflow_id)
    ).scalar_one()


def inputs(task):
    """Return the stored results of the upstream tasks a task reads.

    :param task: the claimed row (see :func:`claim`); the results its claim
        read (``upstream``) are used when they hold every one needed.
    """
    positions = input_positions(task.signature.get("input"))
    if not positions:
        return {}
    if task.upstream is not None:
        found = {int(position): result for position, result in task.upstream.items()}
        if found.keys() >= set(positions):
            return found
    return dict(
        db.session.execute(
            select(TaskRun.position, TaskRun.result).where(
                TaskRun.workflow_id == task.workflow_id,
                TaskRun.position.in_(set(positions)),
            )
        ).all()
    )


def _lock_running(task_id, celery_id, retries, statuses=(RUNNING,)):
    """Lock the root and a task; return ``(workflow, task)`` or ``None``.

    ``None`` means the execution is no longer current (stopped, restarted,
    retried, already finished): the caller must change nothing.
    """
    workflow = lock_workflow(task_id=task_id)
    task = _lock_tasks(TaskRun.id == task_id)[0]
    if not _current_attempt(task, celery_id, retries, statuses):
        logger.info(
            "Ignoring stale report of attempt %s for task %s (%s, attempt %s).",
            celery_id,
            task_id,
            task.status,
            task.celery_id,
        )
        return None
    return workflow, task


def lock_acting(task_id, celery_id, retries, lease, action):
    """Lock the running attempt a body acts for (spawning, delegating), renew its lease.

    :param lease: the task's lease in seconds (default ``WTFLOW_TASK_LEASE``).
    :param action: what the body does, for the error ("spawn child workflows").
    :returns: ``(workflow, task)``, locked.
    :raises InvalidStateError: when the attempt is no longer the running one.
    """
    locked = _lock_running(task_id, celery_id, retries)
    if locked is None:
        raise InvalidStateError(
            f"Task run {task_id} (attempt {celery_id}) is no longer running; "
            f"it cannot {action}."
        )
    workflow, task = locked
    task.lease_expires_at = _lease_end(lease)
    return workflow, task


class _RootLockNeeded(Exception):
    """The success may change the run's status: record it under the root lock."""


def record_success(
    task_id,
    celery_id,
    result,
    retries=0,
    dependants=None,
    runs=None,
    name=None,
    lease=None,
):
    """Record a successful attempt in its own transaction, and commit it.

    The success's statements record nothing for a task whose claim was
    lost (a crash of the database before an unflushed claim's flush, see
    ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``): the attempt is then claimed again,
    in a transaction of its own that waits for its flush, and the success
    recorded (every other report of an attempt claims it again in its own
    transaction, under its lock).

    A task with exactly one dependant is first tried with
    :func:`succeed_shared`, which concurrent successes of the same run do not
    wait for, and the last task of a child run with
    :func:`finish_child_shared`, which the other children of its tree do not
    wait for; when that cannot prove what it needs, the transaction is
    rolled back and the success recorded under the root lock: by
    :func:`succeed_alone` in one round trip where it can, else by
    :func:`succeed`. Where it can, :func:`succeed_shared_alone` records the
    shared success in one round trip first.

    :param dependants: the number of tasks that depend on this one, as the
        claim returned it (``None``: unknown).
    :param runs: ``(root_id, workflow_id)`` of the task's run, as the claim
        returned them (``None``: looked up).
    :param name: the run's definition name, as the claim returned it.
    :param lease: the task's lease in seconds (see :func:`claim`).
    :returns: whether the report was applied (``False`` for a stale one).
    """
    args = (task_id, celery_id, result, retries, dependants, runs, name)
    if _record_success(*args):
        return True
    claimed = atomic(
        claim, task_id, celery_id, retries, lease, upstream=False, flushed=True
    )
    if claimed is None:
        return False
    _warn_lost_claim(task_id, celery_id)
    return _record_success(*args)


def _record_success(task_id, celery_id, result, retries, dependants, runs, name):
    """Record a success by the cheapest way that proves what it needs."""
    shared = None
    if dependants == 1:
        if runs is not None and _shared_in_one_message(name):
            # It checks what succeed_shared would: if it recorded nothing, the
            # report is stale or needs the root lock.
            if atomic(succeed_shared_alone, task_id, celery_id, result, retries, runs):
                return True
        else:
            shared = succeed_shared
    elif (
        dependants == 0
        and runs is not None
        and str(runs[0]) != str(runs[1])  # a child run
        and fused.available(db.session)
    ):
        shared = finish_child_shared
    if shared is not None:
        try:
            return atomic(shared, task_id, celery_id, result, retries, runs)
        except _RootLockNeeded:
            pass
    if (
        runs is not None
        and str(runs[0]) == str(runs[1])  # a root run
        and _finished_in_sql(name)
        and prepared.enabled(db.session)
        and atomic(succeed_alone, task_id, celery_id, result, retries, runs[0])
    ):
        return True
    return atomic(succeed, task_id, celery_id, result, retries, runs)


def _derives_default_status(workflow):
    """Whether a run's status follows the default rule and its graph never grows."""
    cls = _workflow_class(workflow)
    return _has_default_rule(cls) and not dynamic.populates(cls)


def _finished_in_sql(name):
    """Whether a root run of ``name`` records a success in one statement.

    That is :func:`~invenio_wtflow.engine.fused.finish`, on PostgreSQL,
    when the definition keeps the default status rule, grows no graph and
    does not limit its concurrent runs.
    """
    return _fused_for(name) and concurrency.limit_of(name) is None


def succeed_alone(uow, task_id, celery_id, result, retries, workflow_id):
    """Record the success of a root run's task in one round trip.

    The root's lock and :func:`~invenio_wtflow.engine.fused.finish` go in
    one message, sent in autocommit mode: PostgreSQL runs both as one
    transaction, and the second reads what was committed before the first
    got the lock. For a root run whose successes
    ``_finished_in_sql``, through prepared statements (one message
    holds two of them).

    :param workflow_id: the root run's id.
    :returns: whether the success was recorded; ``False`` when the report is
        stale or the success makes a node of the orchestrator's ready (the
        message then changed nothing: :func:`succeed` finds out which).
    """
    lock = (statements.lock_root(False, True), {"root_id": workflow_id})
    return _finish(uow, workflow_id, task_id, celery_id, result, retries, lock, True)


def succeed_shared(uow, task_id, celery_id, result, retries=0, runs=None):
    """Record a success that provably leaves the run ``running``, without the root lock.

    The root and the run are locked ``FOR KEY SHARE``: every transaction that
    changes a graph or a run's status holds ``FOR UPDATE`` on the root, so
    none runs concurrently, and other shared successes do not wait. (The
    one exception, :func:`finish_child_shared`, turns a child run
    ``success`` only when every task of that run has succeeded, which no
    task of the run recorded here can coexist with: this task's dependant
    is still ``pending``.) The run's
    stored status is exact after the commit when, under the default rule:

    - the run is ``running`` (so no task has failed: a failure takes the root
      lock and stores ``failure``);
    - the task has one dependant, still ``pending``, which this transaction
      holds locked by its counter update;
    - and that dependant is now ready (``queued``: the run is ``running``), or
      no task of the run is ``waiting`` (the dependant waits for an upstream
      task that is not finished: the run is ``running``).

    Otherwise ``_RootLockNeeded`` is raised for the caller to roll back
    and use :func:`succeed`. The task's own row is locked before its
    dependant's, as in :func:`succeed`; the success that finishes a run
    always takes the root lock, and sees every shared success committed.

    :param runs: ``(root_id, workflow_id)`` of the task's run, if known.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    workflow = _lock_runs_of(task_id, runs, shared=True)
    if workflow.status != WorkflowStatus.RUNNING.value or not (
        _derives_default_status(workflow)
    ):
        raise _RootLockNeeded()
    outcome = _succeed_and_release(task_id, celery_id, result, retries, alone=True)
    if outcome is None:
        return False
    released = outcome.released
    if len(released) != 1:
        raise _RootLockNeeded()
    if released[0].remaining == 0:
        if released[0].kind is not None:
            raise _RootLockNeeded()  # a node the orchestrator runs
        _queue_ready(uow, released)
    elif _has_waiting_task(released[0], workflow.id):
        raise _RootLockNeeded()
    return True


def _fused_for(name):
    """Whether successes in runs of ``name`` may be fused statements only.

    On PostgreSQL, when the definition keeps the default status rule and
    grows no graph (``name`` ``None``: not known).
    """
    if name is None or not fused.available(db.session):
        return False
    cls = _class_named(name)
    return _has_default_rule(cls) and not dynamic.populates(cls)


def _shared_in_one_message(name):
    """Whether :func:`succeed_shared_alone` may record a success in a run of ``name``.

    On PostgreSQL through prepared statements, when the definition keeps
    the default status rule and grows no graph.
    """
    return _fused_for(name) and prepared.enabled(db.session)


def succeed_shared_alone(uow, task_id, celery_id, result, retries, runs):
    """:func:`succeed_shared` in one round trip.

    The ``FOR KEY SHARE`` locks and the success go in one message, sent in
    autocommit mode (one transaction, the success reading what was
    committed before the locks were granted), and the success itself
    requires what :func:`succeed_shared` checks after it (see
    :func:`~invenio_wtflow.engine.fused.succeed`): otherwise it changes
    nothing.

    :param runs: ``(root_id, workflow_id)`` of the task's run.
    :returns: whether the success was recorded; ``False`` for a stale report
        or a success that needs the root lock (the caller goes on as if this
        had not been tried).
    """
    lock = _run_and_root_lock(runs[1], runs[0], shared=True, rows=True)
    params = _success_params(task_id, celery_id, retries, result, utcnow())
    outcome = fused.succeed(db.session, params, True, lock, alone=True)
    if outcome is None:
        return False
    _queue_ready(uow, [row for row in outcome.released if row.remaining == 0])
    return True


def finish_child_shared(uow, task_id, celery_id, result, retries, runs):
    """Record the success that finishes a child run, without the root lock.

    The root and the child run are locked ``FOR KEY SHARE``, as in
    :func:`succeed_shared`: what changes a graph or stops a tree holds the
    root ``FOR UPDATE`` and excludes this, but the children of one tree
    finish side by side, meeting only on their joining task's row, whose
    counter they decrement (an atomic counter, as a group's members do on
    their join's). It applies when, under the default status rule, with no
    ``max_runs`` for the child's definition:

    - the child run is ``running`` and this task was its last unfinished
      one (no dependant, every other task ``success``): the run succeeds;
    - and its joining task has other children still to finish (or joins
      none yet).

    Otherwise ``_RootLockNeeded`` is raised for the caller to roll back and
    use :func:`succeed`: the last child completes the join under the root
    lock. The rows are locked in :func:`succeed`'s order: root, run, task,
    then the joining task.

    :param runs: ``(root_id, workflow_id)`` of the child run.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    if not fused.available(db.session):
        raise _RootLockNeeded()  # the run's tasks are counted on PostgreSQL only
    run = _lock_runs_of(task_id, runs, shared=True)
    if (
        run.status != WorkflowStatus.RUNNING.value
        or run.parent_task_id is None
        or not _derives_default_status(run)
        or concurrency.limit_of(run.name) is not None
    ):
        raise _RootLockNeeded()
    outcome = _succeed_and_release(task_id, celery_id, result, retries)
    if outcome is None:
        return False
    if outcome.released or default_status(outcome.counts) != WorkflowStatus.SUCCESS:
        raise _RootLockNeeded()
    _store_status(run, WorkflowStatus.SUCCESS, None)
    if not children.count_finished(run):
        raise _RootLockNeeded()
    return True


def _has_waiting_task(released, workflow_id):
    """Whether a run has a task ``waiting``, as its success's statement saw it."""
    if released.waiting is not None:
        return released.waiting
    return db.session.execute(
        statements.waiting_in_run(), {"workflow_id": workflow_id}
    ).scalar()


def _lock_runs_of(task_id, runs, shared=False, as_row=False):
    """Lock a task's root and run (see :func:`lock_workflow`) by key when known.

    :param runs: ``(root_id, workflow_id)``, or ``None``.
    """
    if runs is None:
        return lock_workflow(task_id=task_id, shared=shared, as_row=as_row)
    return lock_workflow(runs[1], root_id=runs[0], shared=shared, as_row=as_row)


def _success_params(task_id, celery_id, retries, result, now):
    """The parameters of a success statement (see :mod:`~invenio_wtflow.engine.fused`)."""
    return {
        "task_id": task_id,
        "attempt_id": celery_id,
        "delivery_retries": retries,
        "output": result,
        "now": now,
    }


def _succeed_and_release(task_id, celery_id, result, retries, alone=False):
    """The conditional ``running -> success`` update, then the dependants' counters.

    On PostgreSQL one statement (see :func:`~invenio_wtflow.engine.fused.succeed`),
    which also queues the dependants that are ready; elsewhere two.

    :param alone: nothing else will change in this transaction: on
        PostgreSQL the statement versions its changes itself.
    :returns: a :class:`~invenio_wtflow.engine.fused.Success`: the task's
        row (``id``, ``kind``), the rows of
        :func:`~invenio_wtflow.engine.statements.release_dependants` and, on
        PostgreSQL unless ``alone``, the run's tasks counted by status; or
        ``None`` for a stale report.
    """
    params = _success_params(task_id, celery_id, retries, result, utcnow())
    if fused.available(db.session):
        outcome = fused.succeed(db.session, params, versioned=alone)
    else:
        task = db.session.execute(statements.succeed(), params).one_or_none()
        if task is not None:
            versioning.changed(db.session, TaskRun, [task.id])
        outcome = task and fused.Success(task, _release(task))
    if outcome is None:
        logger.info(
            "Ignoring stale report of attempt %s for task %s.", celery_id, task_id
        )
    return outcome


def _release(task):
    """Decrement the counters of a finished task's pending dependants."""
    return db.session.execute(
        statements.release_dependants(), {"upstream_id": task.id}
    ).all()


def succeed(uow, task_id, celery_id, result, retries=0, runs=None):
    """Record a successful attempt and queue the dependants it completes.

    The transition is a conditional ``UPDATE ... RETURNING`` under the
    root's lock, with the dependants' counters (on PostgreSQL in the same
    statement, see :func:`~invenio_wtflow.engine.fused.succeed`), versioned at the commit
    (see :mod:`~invenio_wtflow.engine.versioning`).

    The run is locked as a row, not loaded through the ORM, when its
    status follows the default rule and it is a root (it tells no joining
    task); otherwise it is loaded once locked. When ``_finished_in_sql``,
    one statement more records it all (see ``_finish``).

    :param retries: the Celery retry count of the execution reporting.
    :param runs: ``(root_id, workflow_id)`` of the task's run, if known.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    workflow = _lock_runs_of(task_id, runs, as_row=True)
    if workflow.parent_task_id is not None or not _derives_default_status(workflow):
        workflow = db.session.get(WorkflowRun, workflow.id, populate_existing=True)
    elif _finished_in_sql(workflow.name) and _finish(
        uow, workflow.id, task_id, celery_id, result, retries
    ):
        return True
    outcome = _succeed_and_release(task_id, celery_id, result, retries)
    if outcome is None:
        return False
    _released(uow, workflow, *outcome)
    return True


def _finish(
    uow, workflow_id, task_id, celery_id, result, retries, lock=None, alone=False
):
    """The success of a root run's task, in one statement (see ``_finished_in_sql``).

    The statement (see :func:`~invenio_wtflow.engine.fused.finish`) also
    derives and stores the run's status and versions every change; what is
    left here is publishing the dependants it queued.

    :param lock: the statement that locks the run, and its parameters, to
        send with it; ``None`` when the run is locked already.
    :param alone: send it in autocommit mode on a connection of its own (see
        :func:`~invenio_wtflow.engine.prepared.alone`).
    :returns: whether the success was recorded (``False``: nothing changed,
        see :func:`succeed_alone`).
    """
    now = utcnow()
    params = _success_params(task_id, celery_id, retries, result, now)
    params["channel"] = waiting.CHANNEL
    outcome = fused.finish(db.session, params, lock, alone)
    if outcome is None:
        return False
    _queue_ready(uow, [row for row in outcome.released if row.remaining == 0])
    if outcome.changed:
        _show_status(workflow_id, _status_values(outcome.status, None, now))
    return True


def complete(uow, workflow, task, result):
    """Mark a locked task ``success`` and queue the dependants it completes."""
    task.status = SUCCESS.value
    task.lease_expires_at = None
    task.result = result
    task.progress = 1.0
    task.finished_at = utcnow()
    db.session.flush()
    _released(uow, workflow, task, _release(task))


def _released(uow, workflow, task, released, counts=None):
    """Queue what a task's success completed, and refresh the run's status.

    :param released: the dependants whose counter the success decremented;
        those at zero are ready, and queued exactly once.
    :param counts: the run's tasks by status after the success, if known.
    """
    ready = [row for row in released if row.remaining == 0]
    if ready and _queue_ready(uow, ready):
        counts = None  # the orchestrator's nodes were queued too
    if task.kind != NodeKind.POPULATE.value and dynamic.populates(
        _workflow_class(workflow)
    ):
        dynamic.repopulate(uow, workflow)
        counts = None
    refresh_status(uow, workflow, counts=counts)


def _queue_ready(uow, rows):
    """Queue dependants that the counter update just made ready (and locked).

    Tasks are queued with one ``executemany`` ``UPDATE`` (versioned at the
    commit, published after it), unless the counter update queued them
    itself (PostgreSQL, see :func:`~invenio_wtflow.engine.fused.succeed`):
    those are only published. Nodes the orchestrator runs go through
    :func:`_queue`.

    :param rows: the rows the counter update returned, with their ``id``,
        ``kind``, ``name``, ``status``, ``celery_id`` and ``signature``.
    :returns: whether orchestrator nodes were among them.
    """
    nodes = [row.id for row in rows if row.kind is not None]
    if nodes:
        _queue(uow, _lock_tasks(TaskRun.id.in_(nodes)))
    tasks = [row for row in rows if row.kind is None]
    celery_ids = {r.id: r.celery_id for r in tasks if r.status == QUEUED.value}
    pending = {row.id: str(uuid.uuid4()) for row in tasks if row.id not in celery_ids}
    if pending:
        now = utcnow()
        db.session.execute(
            statements.queue(),
            [
                {"task_id": task_id, "attempt_id": celery_id, "now": now}
                for task_id, celery_id in pending.items()
            ],
        )
        versioning.changed(db.session, TaskRun, pending)
        celery_ids.update(pending)
    dispatcher(uow).messages.extend(
        Message.for_attempt(row.id, celery_ids[row.id], row.name, row.signature)
        for row in tasks
    )
    return bool(nodes)


def fail(uow, task_id, celery_id, error, traceback=None, retries=0):
    """Record a failed attempt and cancel every task downstream of it.

    :param retries: the Celery retry count of the execution reporting.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    locked = _lock_running(task_id, celery_id, retries)
    if locked is None:
        return False
    workflow, task = locked
    fail_task(uow, workflow, task, error, traceback)
    return True


def fail_task(uow, workflow, task, error, traceback=None):
    """Mark a locked task ``failure``, cancel what depends on it, refresh the run.

    The child workflows the task spawned and that still run are stopped:
    nothing will join them any more.
    """
    task.status = FAILURE.value
    task.lease_expires_at = None
    task.error = error
    task.traceback = traceback
    task.finished_at = utcnow()
    children.stop_children(
        uow, [task.id], f"Cancelled: parent task {task.name} failed."
    )
    dependants, _ = edges(workflow.id)
    downstream = downstream_of([task.id], dependants)
    if downstream:
        _cancel(
            uow,
            _lock_tasks(TaskRun.id.in_(downstream)),
            f"Cancelled: upstream task {task.name} (node {task.position}) failed.",
        )
    refresh_status(
        uow, workflow, f"Task {task.name} (node {task.position}) failed: {error}"
    )


def retry(uow, task_id, celery_id, retries, reason, eta=None):
    """Record that Celery will retry the running attempt (``running -> queued``).

    :param retries: the retry count of the execution that asked for a retry.
    :param eta: when the retry is due; the sweeper leaves it alone until then.
    """
    tasks = _lock_tasks(TaskRun.id == task_id)
    if not tasks:
        return False
    task = tasks[0]
    if not _current_attempt(task, celery_id, retries):
        return False
    task.status = QUEUED.value
    task.lease_expires_at = None
    task.retries = retries + 1
    task.message = f"Retry {retries + 1}: {reason}"
    task.queued_at = eta or utcnow()
    return True


def report(uow, task_id, celery_id, message=None, progress=None, retries=0, lease=None):
    """Record a running attempt's message and progress, and renew its lease.

    :returns: whether the execution is still the current, running one.
    """
    tasks = _lock_tasks(TaskRun.id == task_id)
    if not tasks:
        return False
    task = tasks[0]
    if not _current_attempt(task, celery_id, retries, lease=lease):
        return False
    if message is not None:
        task.message = message
    if progress is not None:
        task.progress = progress
    task.lease_expires_at = _lease_end(lease)
    return True


def recover_expired(uow, task_id):
    """Run again (or fail) a running attempt whose lease has expired.

    The worker that claimed it is presumed dead (killed, lost, past a hard
    time limit): its attempt is revoked and a new attempt is queued, until
    ``WTFLOW_MAX_ATTEMPTS`` attempts have been made; then the task fails and
    what depends on it is cancelled. A late report of the old attempt is
    ignored, since it carries the old Celery id.

    :returns: ``"requeued"``, ``"failed"`` or ``None`` (nothing to do).
    """
    workflow = lock_workflow(task_id=task_id)
    task = _lock_tasks(TaskRun.id == task_id)[0]
    now = utcnow()
    if (
        task.status != RUNNING.value
        or task.lease_expires_at is None
        or task.lease_expires_at > now
    ):
        return None
    dispatcher(uow).revoked.append(task.celery_id)
    lost = (
        f"Attempt {task.attempt} presumed lost: no sign of life before its lease ended."
    )
    if task.attempt < current_app.config["WTFLOW_MAX_ATTEMPTS"]:
        _queue(uow, [task])
        task.message = f"{lost} Running attempt {task.attempt}."
        refresh_status(uow, workflow)
        return "requeued"
    fail_task(uow, workflow, task, f"LeaseExpired: {lost}")
    return "failed"


def stop(uow, workflow_id):
    """Cancel every non-terminal task of a run and of its descendants.

    Running and queued attempts are revoked after the commit; every run
    below it (children, grandchildren, joined or not) that still has
    unfinished tasks is stopped in the same transaction.

    :raises InvalidStateError: when the run and its descendants have all
        finished already.
    """
    workflow = lock_workflow(workflow_id)
    if WorkflowStatus(workflow.status).is_terminal and not children.has_active(
        workflow.id
    ):
        raise InvalidStateError(
            f"Workflow {workflow.id} is already {workflow.status}; nothing to stop."
        )
    stop_run(uow, workflow, "Cancelled: the workflow was stopped.", "Stopped.")
    return workflow


def stop_run(uow, workflow, reason, message=None):
    """Cancel a locked run's unfinished tasks and stop every run below it.

    :param reason: message recorded on each cancelled task.
    :param message: message recorded on the run (default: ``reason``).
    """
    stop_runs(uow, [workflow], reason, message)


_UNDER_STOP = "Cancelled: a parent workflow was stopped."
"""What the tasks of the runs below a stopped run record."""


def stop_runs(uow, runs, reason, message=None):
    """Cancel the unfinished tasks of locked runs and of every live run below them.

    One batch, however many runs: one query per level of the tree finds the
    runs below, one locks those with work left (by primary key), one their
    unfinished tasks, one flush writes the cancellations and a grouped query
    counts the tasks of the runs below, then of the given runs. Each run's
    status is still its own ``UPDATE``. The runs below settle first, and do
    not tell their parent tasks: each has finished, cancelled here or
    before.

    :param runs: the locked runs to stop.
    :param reason: message recorded on the cancelled tasks of ``runs``.
    :param message: message recorded on ``runs`` (default: ``reason``).
    """
    given = {run.id: run for run in runs}
    below = [r for r in children.live_below(list(given)) if r.id not in given]
    tasks = _lock_tasks(
        TaskRun.workflow_id.in_([run.id for run in [*below, *runs]]),
        TaskRun.status.notin_([s.value for s in TERMINAL_TASK_STATUSES]),
    )
    _cancel_tasks(uow, [t for t in tasks if t.workflow_id in given], reason)
    _cancel_tasks(uow, [t for t in tasks if t.workflow_id not in given], _UNDER_STOP)
    if below:
        refresh_statuses(uow, below, _UNDER_STOP, tell_parent=False)
    refresh_statuses(uow, runs, message or reason)


def stop_task(uow, task_id):
    """Cancel one task (revoking its attempt) and everything downstream of it.

    :raises InvalidStateError: when the task has already finished.
    """
    workflow = lock_workflow(task_id=task_id)
    dependants, _ = edges(workflow.id)
    downstream = downstream_of([task_id], dependants)
    locked = {t.id: t for t in _lock_tasks(TaskRun.id.in_(downstream | {task_id}))}
    task = locked.pop(task_id)
    if TaskStatus(task.status) in TERMINAL_TASK_STATUSES:
        raise InvalidStateError(
            f"Task {task.id} is already {task.status}; nothing to stop."
        )
    _cancel(uow, [task], "Cancelled: the task was stopped.")
    _cancel(
        uow,
        list(locked.values()),
        f"Cancelled: upstream task {task.name} (node {task.position}) was stopped.",
    )
    refresh_status(uow, workflow, f"Task {task.name} (node {task.position}) stopped.")
    return task


def restart(uow, workflow_id, data=None):
    """Reset every task of a run to ``pending`` and start it again (same id).

    :raises InvalidStateError: when the run is a child whose spawning task
        failed or was cancelled (restart that task instead).
    """
    concurrency.lock_for(workflow_id, data)  # before the root: one lock order
    workflow = lock_workflow(workflow_id)
    _check_parent_task(workflow)
    reset_run(uow, workflow)
    if data:
        workflow.data = {**workflow.data, **data}
    db.session.flush()
    return start(uow, workflow.id)


def reset_run(uow, workflow):
    """Cancel a locked run's attempts and put every task back to ``pending``."""
    reset_runs(uow, [workflow])


def reset_runs(uow, runs):
    """Cancel runs' attempts and put each of their tasks back to ``pending``.

    One batch however many runs (a task spawning a thousand stopped children
    again): one query counts the tasks' upstream edges, one locks the tasks.

    :param runs: runs of one tree, whose root the caller has locked.
    """
    ids = [run.id for run in runs]
    upstream = dict(
        db.session.execute(
            select(TaskDependency.task_id, func.count())
            .join(TaskRun, TaskRun.id == TaskDependency.task_id)
            .where(TaskRun.workflow_id.in_(ids))
            .group_by(TaskDependency.task_id)
        ).all()
    )
    tasks = _lock_tasks(TaskRun.workflow_id.in_(ids))
    _cancel(uow, tasks, "Cancelled: the workflow was restarted.")
    for task in tasks:
        _reset(task, upstream.get(task.id, 0))
    for run in runs:
        set_status(uow, run, WorkflowStatus.PENDING)


def _check_parent_task(workflow):
    """Refuse to run a child again under a parent task that has given up."""
    if workflow.parent_task_id is None:
        return
    status = db.session.execute(
        select(TaskRun.status).where(TaskRun.id == workflow.parent_task_id)
    ).scalar_one()
    if status in (FAILURE.value, CANCELLED.value):
        raise InvalidStateError(
            f"Workflow {workflow.id} was spawned by task {workflow.parent_task_id}, "
            f"which is {status}; restart that task instead."
        )


def restart_task(uow, task_id, data=None):
    """Reset a task and everything downstream of it, and run them again.

    Upstream tasks keep their results and are not re-run. ``data`` is merged
    over the run's data first (it reaches the tasks that run again).

    Cancelled tasks the reset set depends on (siblings of a join stopped
    with the run) are reset and run too.

    :raises InvalidStateError: when the task has not run yet, or when a task
        to reset depends on a failed task outside the reset set (restart that
        one instead).
    """
    workflow_id = db.session.execute(
        select(TaskRun.workflow_id).where(TaskRun.id == task_id)
    ).scalar_one_or_none()
    limit = concurrency.lock_for(workflow_id, data) if workflow_id else None
    workflow = lock_workflow(task_id=task_id)
    _check_parent_task(workflow)
    if (
        limit is not None
        and WorkflowStatus(workflow.status).is_terminal
        and not concurrency.has_slot(workflow, limit[0])
    ):
        raise InvalidStateError(
            f"Workflow {workflow.id} has no free slot (max_runs={limit[0]}); "
            "restart the workflow to wait for one."
        )
    status = db.session.execute(
        select(TaskRun.status).where(TaskRun.id == task_id)
    ).scalar_one()
    if status == PENDING.value:
        raise InvalidStateError(
            f"Task {task_id} has not run yet; there is nothing to restart."
        )
    dependants, dependencies = edges(workflow.id)
    statuses = dict(
        db.session.execute(
            select(TaskRun.id, TaskRun.status).where(TaskRun.workflow_id == workflow.id)
        ).all()
    )
    # What the task needs that was cancelled (a stopped sibling of a join, say)
    # runs again with it; a failed upstream must be restarted on purpose.
    reset_ids = {task_id} | downstream_of([task_id], dependants)
    while True:
        outside = (
            set().union(*(dependencies.get(i, set()) for i in reset_ids)) - reset_ids
        )
        cancelled = {i for i in outside if statuses[i] == CANCELLED.value}
        if not cancelled:
            break
        reset_ids |= cancelled | downstream_of(cancelled, dependants)
    upstream = {t.id: t for t in TaskRun.query.filter(TaskRun.id.in_(outside))}
    dead = [t for t in upstream.values() if t.status == FAILURE.value]
    if dead:
        names = ", ".join(f"{t.name} (node {t.position})" for t in dead)
        raise InvalidStateError(
            f"Cannot restart task {task_id}: upstream {names} failed; "
            "restart it instead."
        )
    tasks = _lock_tasks(TaskRun.id.in_(reset_ids))
    if data:
        workflow.data = {**workflow.data, **data}
    _cancel(uow, tasks, "Cancelled: the task was restarted.")
    for task in tasks:
        deps = dependencies.get(task.id, set())
        remaining = sum(
            1
            for dep in deps
            if dep in reset_ids or upstream[dep].status != SUCCESS.value
        )
        _reset(task, remaining)
    _queue(uow, [t for t in tasks if t.remaining == 0])
    if workflow.started_at is None:
        workflow.started_at = utcnow()
    refresh_status(uow, workflow, "Task restarted.")
    return workflow
