# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL: a step of the hot path and all it implies, in one statement.

Every attempt makes two transactions, its claim and its outcome, and on
PostgreSQL each of them is mostly one statement, as is the creation of a
run: data-modifying ``WITH`` clauses change the rows, read what comes with
the change and, when asked, insert Continuum's transaction row and copy the
changed rows into their version tables:

- :func:`claim`: ``queued -> running`` for the expected attempt, with the
  task's number of dependants, the run's data when the task is bare and
  the results of its upstream tasks when it takes an input: everything the
  attempt needs to be called, where other databases read it afterwards;
- :func:`succeed`: ``running -> success``, then the counter of each pending
  dependant, with the dependants that reach zero (tasks, not orchestrator
  nodes) ``queued`` under a Celery id the database draws
  (``gen_random_uuid()``, PostgreSQL 13 or later);
- :func:`finish`: what :func:`succeed` does, and the run's new status
  derived from its tasks (the default rule, in SQL), its ``NOTIFY`` and
  every version: the success of a locked root run in one statement;
- :func:`create`: a new run, its tasks and their edges, inserted from JSON
  documents, with their first versions.

A statement versions its own changes only when nothing else in its
transaction writes them (the claim, a success recorded the shared way, a
run created on its own); otherwise it notes them for :mod:`~invenio_wtflow.engine.versioning` to
copy at the commit, with whatever else the transaction changed.
Other databases run the same transitions as separate statements.
"""

import json
from collections import Counter
from datetime import datetime, timezone
from functools import lru_cache
from typing import NamedTuple

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy_continuum.operation import Operation

from ..models import TaskDependency, TaskRun, TaskStatus, WorkflowRun, WorkflowStatus
from . import prepared, versioning, waiting
from .status import default_status_sql

_TASKS = TaskRun.__table__
_RUNS = WorkflowRun.__table__

PENDING, QUEUED = TaskStatus.PENDING.value, TaskStatus.QUEUED.value
RUNNING, SUCCESS = TaskStatus.RUNNING.value, TaskStatus.SUCCESS.value
WAITING = TaskStatus.WAITING.value


def available(session):
    """Whether the session's database runs these statements (PostgreSQL)."""
    return session.get_bind().dialect.name == "postgresql"


def _execute(
    session, statement, params, before=None, alone=False, synchronous_commit=True
):
    """:func:`~invenio_wtflow.engine.prepared.execute`, alone if asked to.

    The caller computes the parameters first: the transaction's values may
    read through the session (the current user), which must not hold a
    second connection while :func:`~invenio_wtflow.engine.prepared.alone`
    holds one.

    :param alone: send it on a connection of its own, in autocommit mode,
        where the session has begun no transaction.
    :param synchronous_commit: see
        :func:`~invenio_wtflow.engine.prepared.execute` (sent alone only).
    """
    if not alone:
        return prepared.execute(session, statement, params, before)
    with prepared.alone(session) as own:
        return prepared.execute(
            session, statement, params, before, own, synchronous_commit
        )


def _returned(name, extra=()):
    """``RETURNING`` list of a task ``UPDATE``: what its version copies, and ``extra``."""
    quote = postgresql.dialect().identifier_preparer.quote
    columns = [*versioning.copied_columns(TaskRun), *extra]
    return ", ".join(f"{name}.{quote(c)}" for c in dict.fromkeys(columns))


def _versioned(sql, copies, transactions, columns, dialect, source):
    """Add Continuum's transaction row and ``copies`` to a ``WITH`` list.

    :param sql: the ``WITH`` clauses so far.
    :param copies: ``(source, where)`` pairs of task rows to copy.
    :param source: the clause whose rows decide whether there is a change
        (no row: no transaction row, no version).
    """
    when = f"EXISTS (SELECT FROM {source})"
    inserts = [
        versioning.version_copy(TaskRun, Operation.UPDATE, dialect, name, where)
        for name, where in copies
    ]
    return (
        f"{sql}, {versioning.transaction_cte(transactions, columns, dialect, when)}, "
        + ", ".join(f"wtflow_versions_{i} AS ({c})" for i, c in enumerate(inserts))
    )


def _task_parameters(*names):
    """Bound parameters typed like the task table's columns."""
    return [bindparam(name, type_=_TASKS.c[column].type) for name, column in names]


@lru_cache(maxsize=None)
def _claim_statement(transactions, columns, dialect, upstream=True):
    """The claim, its version and what the attempt reads (see :func:`claim`).

    :param upstream: read the upstream results the task takes, if any; else
        ``upstream`` is ``NULL``.
    """
    claimed = (
        f"claimed AS (UPDATE wtflow_task SET status = '{RUNNING}', "
        "retries = :delivery_retries, started_at = :now, "
        "lease_expires_at = :lease_end, updated = :now "
        "WHERE id = :task_id AND celery_id = :attempt_id AND ("
        f"(status = '{QUEUED}' AND retries <= :delivery_retries) OR "
        f"(status = '{RUNNING}' AND retries < :delivery_retries)) "
        f"RETURNING {_returned('wtflow_task')})"
    )
    sql = _versioned(
        f"WITH {claimed}",
        [("claimed", None)],
        transactions,
        columns,
        dialect,
        "claimed",
    )
    sql += (
        " SELECT claimed.id, claimed.workflow_id, run.root_id, run.name AS run_name, "
        "claimed.position, "
        "claimed.name, claimed.signature, "
        "(SELECT count(*) FROM wtflow_task_dependency "
        "WHERE depends_on_id = claimed.id) AS dependants, "
        "CASE WHEN (claimed.signature ->> 'bare')::boolean THEN run.data END AS data, "
        + (
            "CASE WHEN claimed.signature ->> 'input' IS NOT NULL THEN "
            "(SELECT jsonb_object_agg(upstream.position, upstream.result) "
            "FROM wtflow_task_dependency JOIN wtflow_task AS upstream "
            "ON upstream.id = wtflow_task_dependency.depends_on_id "
            "WHERE wtflow_task_dependency.task_id = claimed.id) END"
            if upstream
            else "NULL::jsonb"
        )
        + " AS upstream "
        "FROM claimed JOIN wtflow_workflow AS run ON run.id = claimed.workflow_id"
    )
    return (
        text(sql)
        .bindparams(
            *_task_parameters(
                ("task_id", "id"),
                ("attempt_id", "celery_id"),
                ("delivery_retries", "retries"),
                ("now", "updated"),
                ("lease_end", "lease_expires_at"),
            ),
            *versioning.transaction_parameters(transactions, columns),
        )
        .columns(
            id=_TASKS.c.id.type,
            workflow_id=_TASKS.c.workflow_id.type,
            root_id=_RUNS.c.root_id.type,
            signature=_TASKS.c.signature.type,
            data=_RUNS.c.data.type,
            upstream=postgresql.JSONB(),
        )
    )


def claim(session, params, alone=False, upstream=True, synchronous_commit=True):
    """Claim an attempt, versioned, and read what its call needs.

    :param params: the parameters of :func:`~invenio_wtflow.engine.statements.claim`.
    :param alone: it is the whole transaction: sent in autocommit mode on a
        connection of its own where the session has begun none (see
        :func:`~invenio_wtflow.engine.prepared.alone`).
    :param upstream: read the upstream results too (``False``: the task takes
        none; ``upstream`` is then ``None``, and costs the statement nothing).
    :param synchronous_commit: ``False``: sent alone, the claim commits
        without waiting for its WAL flush (see
        ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``);
        :data:`~invenio_wtflow.engine.prepared.IF_CAUGHT_UP`: only when
        every commit before it is flushed already (and no synchronous
        standby is configured).
    :returns: the row of :func:`~invenio_wtflow.engine.statements.claim`, with
        ``run_name`` (the run's definition name), ``data`` (the run's data,
        for a bare task) and ``upstream`` (the results of the upstream
        tasks by position, for a task with an input) read too; ``None``
        when the delivery claims nothing.
    """
    transactions, values = versioning.transaction_values(session)
    statement = _claim_statement(
        transactions, tuple(sorted(values)), session.get_bind().dialect, upstream
    )
    tx = {f"tx_{name}": value for name, value in values.items()}
    return _execute(
        session,
        statement,
        {**params, **tx},
        alone=alone,
        synchronous_commit=synchronous_commit,
    ).one_or_none()


def _success_clauses(condition=None):
    """``WITH done AS (...), released AS (...)``: a success and its dependants.

    ``done`` is the task's conditional ``running -> success``; ``released``
    the counter of each pending dependant, the ready ones (tasks, not the
    orchestrator's nodes) ``queued`` under a Celery id the database draws.

    :param condition: SQL the success also requires.
    """
    ready = "wtflow_task.remaining = 1 AND wtflow_task.kind IS NULL"

    def when_ready(value, column):
        return (
            f"{column} = CASE WHEN {ready} THEN {value} ELSE wtflow_task.{column} END"
        )

    queued = ", ".join(
        when_ready(value, column)
        for column, value in (
            ("status", f"'{QUEUED}'"),
            ("attempt", "wtflow_task.attempt + 1"),
            ("retries", "0"),
            ("celery_id", "gen_random_uuid()::text"),
            ("queued_at", ":now"),
            ("started_at", "NULL"),
            ("finished_at", "NULL"),
            ("lease_expires_at", "NULL"),
            ("updated", ":now"),
        )
    )
    return (
        f"WITH done AS (UPDATE wtflow_task SET status = '{SUCCESS}', "
        "lease_expires_at = NULL, result = :output, progress = 1.0, "
        "finished_at = :now, updated = :now "
        "WHERE id = :task_id AND celery_id = :attempt_id "
        f"AND status = '{RUNNING}' AND retries = :delivery_retries "
        f"{f'AND {condition} ' if condition else ''}"
        f"RETURNING {_returned('wtflow_task', ['kind'])}), "
        f"released AS (UPDATE wtflow_task SET remaining = wtflow_task.remaining - 1, "
        f"{queued} FROM wtflow_task_dependency, done "
        "WHERE wtflow_task_dependency.depends_on_id = done.id "
        "AND wtflow_task.id = wtflow_task_dependency.task_id "
        f"AND wtflow_task.status = '{PENDING}' "
        f"RETURNING {_returned('wtflow_task', ['remaining', 'kind'])})"
    )


_RELEASED_COLUMNS = (
    "released.id, released.remaining, released.kind, released.name, "
    "released.status, released.celery_id, "
    "CASE WHEN released.remaining = 0 THEN released.signature END AS signature"
)
"""What the caller reads of each released dependant."""

_SUCCESS_PARAMETERS = (
    ("task_id", "id"),
    ("attempt_id", "celery_id"),
    ("delivery_retries", "retries"),
    ("output", "result"),
    ("now", "updated"),
)


_LEAVES_RUN_RUNNING = (
    "EXISTS (SELECT FROM wtflow_workflow AS run "
    "WHERE run.id = wtflow_task.workflow_id "
    f"AND run.status = '{WorkflowStatus.RUNNING.value}') "
    "AND (SELECT count(*) = 1 AND bool_and(dependant.kind IS NULL AND ("
    "dependant.remaining = 1 OR NOT EXISTS (SELECT FROM wtflow_task AS other "
    "WHERE other.workflow_id = wtflow_task.workflow_id "
    f"AND other.status = '{WAITING}'))) "
    "FROM wtflow_task_dependency JOIN wtflow_task AS dependant "
    "ON dependant.id = wtflow_task_dependency.task_id "
    "WHERE wtflow_task_dependency.depends_on_id = :task_id "
    f"AND dependant.status = '{PENDING}')"
)
"""What a success proves, under ``FOR KEY SHARE`` locks, to leave its run
``running`` by the default rule (see ``orchestrator.succeed_shared``): the
run is ``running``, and the task's one pending dependant is a task (not a
node of the orchestrator's, whatever its counter: concurrent successes
read it before each other's decrement) that becomes ready, or waits with
no task of the run ``waiting``."""


@lru_cache(maxsize=None)
def _success_statement(
    versioned, transactions=None, columns=(), dialect=None, guarded=False
):
    """The success and the release of its dependants (see :func:`succeed`)."""
    sql = _success_clauses(_LEAVES_RUN_RUNNING if guarded else None)
    if versioned:
        copies = [("done", None), ("released", f"released.status = '{QUEUED}'")]
        sql = _versioned(sql, copies, transactions, columns, dialect, "done")
        counts = "NULL"
        # Whether the run has a task waiting, when a dependant is not ready
        # (see ``orchestrator.succeed_shared``).
        waiting = (
            "CASE WHEN released.remaining > 0 THEN EXISTS (SELECT FROM wtflow_task "
            "WHERE wtflow_task.workflow_id = done.workflow_id "
            f"AND wtflow_task.status = '{WAITING}') END"
        )
    else:
        # The run's tasks by status, as the statement found them.
        sql += (
            ", counted AS (SELECT jsonb_object_agg(status, tasks) AS counts FROM "
            "(SELECT wtflow_task.status, count(*) AS tasks FROM wtflow_task, done "
            "WHERE wtflow_task.workflow_id = done.workflow_id "
            "GROUP BY wtflow_task.status) AS by_status)"
        )
        counts = "(SELECT counts FROM counted)"
        waiting = "NULL"
    sql += (
        " SELECT done.id AS done_id, done.kind AS done_kind, "
        f"{counts} AS counts, {waiting} AS waiting, {_RELEASED_COLUMNS} "
        "FROM done LEFT JOIN released ON true"
    )
    statement = text(sql).bindparams(
        *_task_parameters(*_SUCCESS_PARAMETERS),
        *(
            versioning.transaction_parameters(transactions, columns)
            if versioned
            else ()
        ),
    )
    return statement.columns(
        done_id=_TASKS.c.id.type,
        counts=postgresql.JSONB(),
        id=_TASKS.c.id.type,
        signature=_TASKS.c.signature.type,
    )


def succeed(session, params, versioned, lock=None, alone=False):
    """Record a success and release its dependants; return what changed.

    :param params: the parameters of :func:`~invenio_wtflow.engine.statements.succeed`.
    :param versioned: version the changed rows in the statement itself (the
        transaction writes nothing else), and look for a task ``waiting`` in
        the run when a dependant is not ready; otherwise the rows are noted
        for the commit (see :func:`~invenio_wtflow.engine.versioning.changed`),
        and the run's tasks are counted by status, as the statement leaves
        them.
    :param lock: ``(statement, params)`` that locks the run and its root
        ``FOR KEY SHARE``, sent in the same message just before (see
        :func:`~invenio_wtflow.engine.prepared.execute`); with ``versioned``
        only. The success then also requires what the caller would check
        after it (see ``_LEAVES_RUN_RUNNING``), and changes nothing
        without it.
    :param alone: it is the whole transaction: sent in autocommit mode on a
        connection of its own where the session has begun none (see
        :func:`~invenio_wtflow.engine.prepared.alone`).
    :returns: a :class:`Success`, or ``None`` when nothing changed: a stale
        report (or, with ``lock``, a success to record under the root lock).
    """
    if versioned:
        transactions, values = versioning.transaction_values(session)
        statement = _success_statement(
            True,
            transactions,
            tuple(sorted(values)),
            session.get_bind().dialect,
            guarded=lock is not None,
        )
        params = {**params, **{f"tx_{k}": v for k, v in values.items()}}
    else:
        statement = _success_statement(False)
    rows = _execute(session, statement, params, lock, alone).all()
    if not rows:
        return None
    task = Done(rows[0].done_id, rows[0].done_kind)
    released = [row for row in rows if row.id is not None]
    queued = [row.id for row in released if row.status == QUEUED]
    if versioned:
        return Success(task, released)
    versioning.changed(session, TaskRun, [task.id, *queued])
    counts = Counter(rows[0].counts or {})
    counts.update({SUCCESS: 1, RUNNING: -1, QUEUED: len(queued), PENDING: -len(queued)})
    return Success(task, released, dict(counts))


class Done(NamedTuple):
    """The task a success changed."""

    id: object
    kind: str


class Success(NamedTuple):
    """What a success changed (see :func:`succeed`)."""

    task: Done
    """The task that succeeded: its ``id`` and ``kind``."""

    released: list
    """Each pending dependant's ``id``, new ``remaining``, ``kind``, ``name``,
    ``status``, ``celery_id``, (when ready) ``signature`` and (alone, when
    not ready) whether a task of the run is ``waiting``."""

    counts: dict = None
    """The run's tasks by status after the change, when counted."""


_FINISHED = ", ".join(f"'{s.value}'" for s in WorkflowStatus if s.is_terminal)

_READIES_NO_NODE = (
    "NOT EXISTS (SELECT FROM wtflow_task_dependency JOIN wtflow_task AS node "
    "ON node.id = wtflow_task_dependency.task_id "
    "WHERE wtflow_task_dependency.depends_on_id = :task_id "
    f"AND node.kind IS NOT NULL AND node.status = '{PENDING}' AND node.remaining = 1)"
)
"""The success makes no node of the orchestrator's ready (see :func:`finish`)."""


@lru_cache(maxsize=None)
def _finish_statement(transactions, columns, dialect):
    """A success, its dependants, the run's new status and every version (see :func:`finish`)."""
    quote = dialect.identifier_preparer.quote
    run_columns = ", ".join(
        f"wtflow_workflow.{quote(c)}" for c in versioning.copied_columns(WorkflowRun)
    )
    payload = "run.id::text || ' ' || run.status"
    sql = _success_clauses(_READIES_NO_NODE) + (
        # The run's tasks as the success leaves them (the statement's own
        # reads see the rows as they were before it).
        ", settled AS (SELECT CASE WHEN wtflow_task.id = done.id "
        f"THEN '{SUCCESS}' WHEN released.status = '{QUEUED}' THEN '{QUEUED}' "
        "ELSE wtflow_task.status END AS status "
        "FROM wtflow_task JOIN done ON wtflow_task.workflow_id = done.workflow_id "
        "LEFT JOIN released ON released.id = wtflow_task.id), "
        f"derived AS (SELECT {default_status_sql('settled.status')} AS status "
        "FROM settled), "
        "run AS (UPDATE wtflow_workflow SET status = derived.status, message = NULL, "
        f"finished_at = CASE WHEN derived.status IN ({_FINISHED}) THEN :now END, "
        f"slot_requested_at = CASE WHEN derived.status IN ({_FINISHED}) "
        "THEN NULL ELSE wtflow_workflow.slot_requested_at END, updated = :now "
        "FROM derived, done WHERE wtflow_workflow.id = done.workflow_id "
        "AND wtflow_workflow.status <> derived.status "
        f"RETURNING {run_columns}), "
        f"notified AS (SELECT pg_notify(:channel, {payload}), "
        f"pg_notify({waiting.run_channel_sql('run.id')}, {payload}) "
        f"FROM run WHERE run.status IN ({_FINISHED}))"
    )
    copies = [
        ("done", TaskRun, None),
        ("released", TaskRun, f"released.status = '{QUEUED}'"),
        ("run", WorkflowRun, None),
    ]
    sql += (
        f", {versioning.transaction_cte(transactions, columns, dialect, 'EXISTS (SELECT FROM done)')}, "
        + ", ".join(
            f"wtflow_versions_{i} AS "
            f"({versioning.version_copy(model, Operation.UPDATE, dialect, name, where)})"
            for i, (name, model, where) in enumerate(copies)
        )
        + " SELECT done.id AS done_id, done.kind AS done_kind, "
        "derived.status AS run_status, EXISTS (SELECT FROM run) AS run_changed, "
        f"(SELECT count(*) FROM notified) AS notified, {_RELEASED_COLUMNS} "
        "FROM done CROSS JOIN derived LEFT JOIN released ON true"
    )
    statement = text(sql).bindparams(
        *_task_parameters(*_SUCCESS_PARAMETERS),
        bindparam("channel", type_=String()),
        *versioning.transaction_parameters(transactions, columns),
    )
    return statement.columns(
        done_id=_TASKS.c.id.type,
        id=_TASKS.c.id.type,
        signature=_TASKS.c.signature.type,
    )


def finish(session, params, lock=None, alone=False):
    """Record a success and all it implies for a locked root run, in one statement.

    For a root run whose status follows the default rule
    (:func:`~invenio_wtflow.engine.status.default_status_sql`) and whose
    definition neither grows its graph nor limits concurrent runs: the
    success and its dependants' counters (as :func:`succeed`), the run's new
    status (with its ``NOTIFY`` when it finishes, see
    :mod:`~invenio_wtflow.engine.waiting`), Continuum's transaction row and
    the versions of every row it changed. A success that would make a node
    of the orchestrator's ready changes nothing here: the node is queued in
    Python (see ``orchestrator.succeed``).

    :param params: the parameters of :func:`succeed`, and ``channel``.
    :param lock: ``(statement, params)`` that locks the run, sent in the
        same message just before (see :func:`~invenio_wtflow.engine.prepared.execute`);
        ``None`` when the caller holds the lock.
    :param alone: it is the whole transaction: sent in autocommit mode on a
        connection of its own where the session has begun none (see
        :func:`~invenio_wtflow.engine.prepared.alone`).
    :returns: a :class:`Finish`, or ``None`` when nothing changed: a stale
        report, or a node to make ready.
    """
    transactions, values = versioning.transaction_values(session)
    statement = _finish_statement(
        transactions, tuple(sorted(values)), session.get_bind().dialect
    )
    tx = {f"tx_{name}": value for name, value in values.items()}
    rows = _execute(session, statement, {**params, **tx}, lock, alone).all()
    if not rows:
        return None
    first = rows[0]
    return Finish(
        Done(first.done_id, first.done_kind),
        [row for row in rows if row.id is not None],
        WorkflowStatus(first.run_status),
        first.run_changed,
    )


class Finish(NamedTuple):
    """What :func:`finish` changed."""

    task: Done
    """The task that succeeded."""

    released: list
    """Its pending dependants, as :attr:`Success.released`."""

    status: WorkflowStatus
    """The run's status, as the success leaves it."""

    changed: bool
    """Whether the statement stored that status (it was another)."""


@lru_cache(maxsize=None)
def _create_statement(transactions, columns, dialect):
    """Insert a run, its tasks and edges, with their versions (see :func:`create`)."""
    quote = dialect.identifier_preparer.quote

    when = "EXISTS (SELECT FROM run)"

    def inserted(name, model, parameter, recordset=True):
        table = model.__table__
        names = ", ".join(quote(c.name) for c in table.columns)
        source = "jsonb_populate_recordset" if recordset else "jsonb_populate_record"
        returned = (
            versioning.copied_columns(model) if model is not TaskDependency else []
        )
        returning = (
            f" RETURNING {', '.join(quote(c) for c in returned)}" if returned else ""
        )
        # The run's id decides: already there (an earlier try), nothing is.
        condition = (
            " ON CONFLICT (id) DO NOTHING" if not recordset else f" WHERE {when}"
        )
        return (
            f"{name} AS (INSERT INTO {quote(table.name)} ({names}) "
            f"SELECT {names} FROM {source}(NULL::{quote(table.name)}, "
            f"CAST(:{parameter} AS jsonb)){condition}{returning})"
        )

    sql = (
        f"WITH {inserted('run', WorkflowRun, 'run', recordset=False)}, "
        f"{inserted('tasks', TaskRun, 'tasks')}, "
        f"{inserted('edges', TaskDependency, 'edges')}, "
        f"{versioning.transaction_cte(transactions, columns, dialect, when)}, "
        "wtflow_versions_0 AS ("
        f"{versioning.version_copy(WorkflowRun, Operation.INSERT, dialect, 'run')}), "
        "wtflow_versions_1 AS ("
        f"{versioning.version_copy(TaskRun, Operation.INSERT, dialect, 'tasks')}) "
        "SELECT id FROM wtflow_transaction"
    )
    return text(sql).bindparams(
        *(bindparam(name, type_=String()) for name in ("run", "tasks", "edges")),
        *versioning.transaction_parameters(transactions, columns),
    )


def create(session, run, tasks, edges, published=False):
    """Insert a run, its tasks and their edges with their first versions, at once.

    For a transaction that writes nothing else: the rows are not noted for
    the commit (see :func:`~invenio_wtflow.engine.versioning.insert`). Where
    the session has begun no transaction, it is the whole transaction, sent
    in autocommit mode on a connection of its own (see
    :func:`~invenio_wtflow.engine.prepared.alone`); a retry with the same
    run id, after an answer was lost, finds the run there and inserts
    nothing (no second run, no orphan tasks). Else it goes in the session's.

    :param run: the run's row, with every column of its table.
    :param tasks: the tasks' rows, likewise.
    :param edges: the edges' rows.
    :param published: some of its tasks are queued, to publish after the
        commit. Sent alone, the commit then does not wait for its WAL flush:
        the session waits for it after the publish, before the caller gets
        the run (:func:`~invenio_wtflow.engine.prepared.await_flush`, called
        by :class:`~invenio_wtflow.engine.dispatch.DispatchOp`), so the
        flush and the delivery overlap. A server crash in between forgets
        the run: the call's transaction is tried again, or fails, as after
        any lost connection (see ``orchestrator.atomic``), and the messages
        already published find no attempt to claim.
    :returns: whether it inserted them (``False``: a run with that id exists).
    """
    transactions, values = versioning.transaction_values(session)
    statement = _create_statement(
        transactions, tuple(sorted(values)), session.get_bind().dialect
    )
    params = {
        "run": _document(run),
        "tasks": _document(tasks),
        "edges": _document(edges),
        **{f"tx_{name}": value for name, value in values.items()},
    }
    with prepared.alone(session) as own:
        later = published and prepared.commits_unflushed(session, own)
        if later:
            prepared.unflushed(session)
        rows = prepared.execute(
            session, statement, params, None, own, synchronous_commit=not later
        )
        return bool(rows.all())


def _document(rows):
    """Rows as the JSON document ``jsonb_populate_record(set)`` reads."""
    return _ENCODER.encode(rows)


def _json_value(value):
    """Ids as text; times in UTC with their offset.

    A time without a zone is UTC (as ``UTCDateTime`` binds it); written
    with ``+00:00``, PostgreSQL does not read it in the session's
    ``TimeZone``.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


_ENCODER = json.JSONEncoder(default=_json_value, separators=(",", ":"))
"""The encoder of :func:`_document` (``json.dumps`` would make one per call)."""
