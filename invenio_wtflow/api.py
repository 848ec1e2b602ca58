# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The Python API: the ``Workflow`` and ``Task`` objects a caller uses.

Methods that change a run commit through invenio-db's unit of work and
publish the Celery messages of the tasks they queue after that commit.
"""

import uuid
from datetime import timedelta
from numbers import Real

from flask import current_app, url_for
from invenio_db import db
from sqlalchemy import bindparam, case, func
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import null, select, text
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy_continuum import version_class
from werkzeug.routing import BuildError

from .engine import children, delegation, orchestrator, waiting
from .engine.dynamic import callback_results, populate_node, populates
from .engine.graph import Graph, compile_canvas, ensure_json, ensure_object, resolve
from .engine.status import default_rule, default_status
from .errors import (
    InvalidDataError,
    InvalidDefinitionError,
    MissingTokenError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkflowNotFoundError,
)
from .models import (
    TaskDependency,
    TaskRun,
    TaskStatus,
    WorkflowRun,
    WorkflowStatus,
    utcnow,
)
from .proxies import current_wtflow


def _history(model):
    """Return the Continuum versions of a row as dictionaries, oldest first."""
    versions = (
        db.session.query(version_class(type(model)))
        .filter_by(id=model.id)
        .order_by("transaction_id")
        .all()
    )
    fields = [
        c
        for c in ("status", "message", "progress", "attempt", "retries", "error")
        if hasattr(type(model), c)
    ]
    entries = []
    for version in versions:
        transaction = version.transaction
        entry = {
            "transaction_id": version.transaction_id,
            "issued_at": transaction.issued_at,
            "user_id": getattr(transaction, "user_id", None),
            "operation": version.operation_type,
        }
        entry.update({f: getattr(version, f) for f in fields})
        entries.append(entry)
    return entries


class Task:
    """One task of a workflow run."""

    def __init__(self, model):
        """Wrap a :class:`~invenio_wtflow.models.TaskRun`."""
        self.model = model

    @classmethod
    def get(cls, task_id):
        """Return the task run with the given id.

        :param task_id: the task run's UUID (string or :class:`uuid.UUID`).
        :raises TaskNotFoundError: when there is none.
        """
        model = _get(TaskRun, task_id)
        if model is None:
            raise TaskNotFoundError(task_id)
        return cls(model)

    id = property(lambda self: self.model.id, doc="The task run's id.")
    name = property(lambda self: self.model.name, doc="Celery task name.")
    position = property(lambda self: self.model.position, doc="Graph position.")
    status = property(lambda self: self.model.status, doc="Current status.")
    message = property(lambda self: self.model.message, doc="Last message.")
    progress = property(lambda self: self.model.progress, doc="Last progress.")
    result = property(lambda self: self.model.result, doc="Stored JSON result.")
    error = property(lambda self: self.model.error, doc="Error of the failure.")
    attempt = property(lambda self: self.model.attempt, doc="Attempt number.")
    kind = property(
        lambda self: self.model.kind,
        doc="``None`` for a Celery task, else ``populate`` or ``callback``.",
    )
    key = property(
        lambda self: (self.model.signature or {}).get("key"),
        doc="Key a node added at run time was declared with, if any.",
    )
    workflow_id = property(
        lambda self: self.model.workflow_id, doc="Id of the workflow run."
    )

    @property
    def workflow(self):
        """The :class:`Workflow` this task belongs to."""
        return Workflow.get(self.model.workflow_id)

    def restart(self, **data):
        """Reset this task and everything downstream, and run them again.

        :param data: merged over the run's data before the tasks run again.
        """
        data = _check_data(data)
        orchestrator.atomic(orchestrator.restart_task, self.model.id, data)
        db.session.refresh(self.model)
        return self

    def stop(self):
        """Cancel this task (revoking its attempt) and what depends on it."""
        orchestrator.atomic(orchestrator.stop_task, self.model.id)
        db.session.refresh(self.model)
        return self

    def complete(self, token, status, result=None, message=None):
        """Complete this delegated task with its token, as its external system.

        Applied once: the same completion again changes nothing (a replay),
        and the task is returned as it is. See
        :meth:`~invenio_wtflow.tasks.WorkflowTask.delegate`.

        :param token: the token of the task's ticket.
        :param status: ``"success"`` or ``"failure"``.
        :param result: the task's JSON result (on failure, kept for the record).
        :param message: the task's message; for a failure, its error's text.
        :raises MissingTokenError: when ``token`` is empty.
        :raises InvalidTokenError: when the token is wrong, expired or another
            task's.
        :raises CompletionConflictError: when the token is an earlier attempt's,
            or the task was stopped, failed, timed out or completed otherwise.
        :raises InvalidDataError: for a bad status, message or result.
        """
        complete_task(self.model.id, token, status, result, message)
        db.session.refresh(self.model)
        return self

    @property
    def deadline(self):
        """Deadline of the current attempt's delegation, or ``None`` (one query)."""
        return delegation.deadline_of(self.model)

    def history(self):
        """Every recorded change of this task, oldest first."""
        return _history(self.model)

    def __repr__(self):
        """Show name, position and status."""
        return f"<Task {self.name} #{self.position} {self.status}>"


def _iso_sql(column):
    """SQL of a timestamp as :meth:`datetime.datetime.isoformat` writes it in UTC.

    ``NULL`` stays ``NULL``; whole seconds have no fraction, as in Python.
    """
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"""replace(to_char({utc}, 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')"""
        " || '+00:00'"
    )


_TASK_LIST_JSON = text(
    "WITH edges AS (SELECT d.task_id, json_agg(d.depends_on_id::text "
    "ORDER BY d.depends_on_id) AS ids FROM wtflow_task_dependency d "
    "JOIN wtflow_task u ON u.id = d.task_id WHERE u.workflow_id = :workflow_id "
    "GROUP BY d.task_id) "
    "SELECT coalesce(json_agg(r ORDER BY r.position), '[]'::json)::text FROM ("
    "SELECT t.attempt, coalesce(edges.ids, '[]'::json) AS depends_on, "
    f"{_iso_sql('t.finished_at')} AS finished, t.id::text AS id, "
    "CASE WHEN t.node_key IS NOT NULL THEN t.signature ->> 'key' END AS key, "
    "t.kind, t.message, t.name, t.position, t.progress, "
    f"{_iso_sql('t.queued_at')} AS queued, t.retries, "
    f"{_iso_sql('t.started_at')} AS started, t.status "
    "FROM wtflow_task t LEFT JOIN edges ON edges.task_id = t.id "
    "WHERE t.workflow_id = :workflow_id) r"
).bindparams(bindparam("workflow_id", type_=TaskRun.__table__.c.workflow_id.type))
"""The task listing of a run, rendered by PostgreSQL (see ``task_list_json``)."""


class Workflow:
    """A workflow definition, and the run objects the API returns.

    Subclass it to define a workflow by a Celery canvas::

        class VideoProcessing(Workflow):
            definition = chain(group(extract_metadata, extract_frames), publish)

    :meth:`create` and :meth:`get` return an instance of the class registered
    under the run's name, so a subclass can override :meth:`compute_status`:
    that is the hook for a custom status rule (the orchestrator stores its
    answer, so lists can filter by it). Overriding the :attr:`status` property
    instead would only change what this object says, not the stored status.
    """

    definition = None
    """The Celery canvas (or bare task) the workflow runs."""

    max_runs = None
    """At most this many runs of the definition (per key) at once; ``None``: no limit."""

    concurrency_key = None
    """Function of a run's data naming the key ``max_runs`` applies to."""

    populate = None
    """Override as ``populate(self, ctx)`` to grow the graph at run time.

    The root's orchestrator calls it with a
    :class:`~invenio_wtflow.engine.dynamic.Context` when the run starts and
    again after any of its nodes succeeds; it declares nodes with
    ``ctx.add(...)`` and callbacks with ``ctx.add_callback(...)``, and must be
    idempotent (see :mod:`~invenio_wtflow.engine.dynamic`). ``definition``
    is optional then: it is the part of the graph known in advance.
    """

    created_now = False
    """After :meth:`create`: whether this call created the run (not a key hit)."""

    _shell = None
    """A run :meth:`create` left out of the session, until first used."""

    def __init__(self, model):
        """Wrap a :class:`~invenio_wtflow.models.WorkflowRun`."""
        self._model = model
        self._id = None

    @classmethod
    def _lazy(cls, workflow_id):
        """Refer to a run by id; its row is loaded on first use.

        A task spawning many children keeps only their ids, so its session
        does not grow with every child (each flush would scan them all).
        """
        workflow = cls(None)
        workflow._id = workflow_id
        return workflow

    @classmethod
    def _created(cls, model):
        """Wrap a run :meth:`create` committed and left out of the session.

        The session knows it from its first use on (see :attr:`model`), by
        its identity alone: added before the publish, it cost a quarter of
        the creation's CPU on the caller's way to the message.
        """
        if not sa_inspect(model).transient:  # in the session already: see create_run
            return cls(model)
        workflow = cls(None)
        workflow._id = model.id
        workflow._shell = model
        return workflow

    @property
    def model(self):
        """The :class:`~invenio_wtflow.models.WorkflowRun` row.

        A run :meth:`create` has just inserted joins the current session
        here, at its first use; its columns are read then.
        """
        if self._shell is not None:
            shell, self._shell = self._shell, None
            if sa_inspect(shell).transient:  # else a copy of this object attached it
                self._model = orchestrator.known(shell)
        if self._model is None:
            self._model = _get(WorkflowRun, self._id)
            if self._model is None:
                raise WorkflowNotFoundError(self._id)
        return self._model

    @property
    def id(self):
        """The run's id, read from the session's identity of the row.

        The row is not read again for it (after :meth:`create`'s commit, say).
        """
        if self._model is None:
            return self._id
        identity = sa_inspect(self._model).identity
        return self._model.id if identity is None else identity[0]

    #
    # Lookup and creation
    #
    @classmethod
    def get(cls, workflow_id):
        """Return the run with the given id.

        :param workflow_id: the run's UUID (string or :class:`uuid.UUID`).
        :raises WorkflowNotFoundError: when there is none.
        """
        model = _get(WorkflowRun, workflow_id)
        if model is None:
            raise WorkflowNotFoundError(workflow_id)
        return cls._wrap(model)

    @classmethod
    def _wrap(cls, model):
        klass = current_wtflow.workflow_class(model.name) or Workflow
        return klass(model)

    @classmethod
    def compile(cls):
        """Compile the class's definition into a graph.

        :raises InvalidDefinitionError: when ``definition`` is not a canvas.
        """
        dynamic_ = populates(cls)
        if cls.definition is None:
            if not dynamic_:
                raise InvalidDefinitionError(
                    f"{cls.__name__} has no definition (set `definition` to a "
                    "canvas, or define `populate`)."
                )
            graph = Graph(nodes=[], output=None)
        else:
            graph = compile_canvas(cls.definition)
        if dynamic_:
            graph.nodes.append(populate_node(len(graph.nodes)))
        return graph

    @classmethod
    def create(cls, name, data=None, key=None, created_by=None, start=False):
        """Create a run of a registered definition, with all its tasks pending.

        Nothing runs until :meth:`start`, unless ``start`` is true. With a
        ``key``, the call is idempotent: a run with the same name and key is
        returned as it is, and not started again (a unique constraint
        decides, so concurrent calls create one run).

        :param name: the name the definition is registered under.
        :param data: JSON-serialisable workflow data (kwargs of bare tasks).
        :param key: optional idempotency key.
        :param created_by: optional id of the user creating the run.
        :param start: start the new run in the same transaction, as
            :meth:`start` would (one commit; the run is never seen pending).
        :raises UnknownWorkflowError: when no definition has that name.
        :raises InvalidDataError: when ``data`` is not a JSON object.
        """
        klass = current_wtflow.get_workflow_class(name)
        data = _check_data(data)
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidDataError("key must be a non-empty string.")
        graph = current_wtflow.compiled(name)
        model, created = orchestrator.atomic(
            orchestrator.create_run,
            name,
            graph,
            data,
            key=key,
            created_by=created_by,
            started=bool(start),
            workflow_id=uuid.uuid4(),  # the same if the transaction is retried
            attach=False,
        )
        workflow = klass._created(model)
        workflow.created_now = created
        return workflow

    @classmethod
    def subworkflow(cls, name, data=None, key=None):
        """Return a node that runs another registered definition as a child.

        Put it in a canvas like any signature: the node spawns a run of
        ``name`` (with the run's data, ``data`` merged over it) and succeeds
        with that run's result when it succeeds, or fails when it fails::

            definition = chain(probe, Workflow.subworkflow("transcode"), publish)

        :param name: the registered name of the definition.
        :param data: data merged over the parent run's data.
        :param key: optional identity of the child (see ``WorkflowTask.spawn``).
        """
        from .tasks import run_subworkflow

        return run_subworkflow.si(name, data=_check_data(data), key=key)

    #
    # Actions
    #
    def start(self, **data):
        """Start a pending run; ``data`` is merged over the run's data.

        Returns at once: the first tasks are published after the commit.

        :raises InvalidStateError: when the run is not pending.
        """
        data = _check_data(data)
        orchestrator.atomic(orchestrator.start, self.model.id, data)
        return self._refresh()

    def stop(self):
        """Cancel every unfinished task and revoke the running attempts."""
        orchestrator.atomic(orchestrator.stop, self.model.id)
        return self._refresh()

    def restart(self, **data):
        """Run every task again; keeps the id, merges ``data`` over the old."""
        data = _check_data(data)
        orchestrator.atomic(orchestrator.restart, self.model.id, data)
        return self._refresh()

    def _refresh(self):
        db.session.expire_all()
        return self

    #
    # State
    #
    name = property(lambda self: self.model.name, doc="Definition name.")
    key = property(lambda self: self.model.key, doc="Idempotency key.")
    data = property(lambda self: self.model.data, doc="Workflow data.")
    message = property(lambda self: self.model.message, doc="Status reason.")
    created_by = property(
        lambda self: self.model.created_by, doc="Id of the user who created it."
    )
    root_id = property(lambda self: self.model.root_id, doc="Root of the tree.")
    parent_id = property(
        lambda self: self.model.parent_id, doc="Parent run (``None`` for a root)."
    )
    parent_task_id = property(
        lambda self: self.model.parent_task_id, doc="Task run that spawned it."
    )
    spawn_index = property(
        lambda self: self.model.spawn_index, doc="Spawn order within the parent task."
    )

    @property
    def parent(self):
        """The parent :class:`Workflow`, or ``None`` for a root."""
        return None if self.parent_id is None else Workflow.get(self.parent_id)

    def count_children(self):
        """Return the number of child runs (one query)."""
        return db.session.execute(
            select(func.count()).where(WorkflowRun.parent_id == self.id)
        ).scalar_one()

    def children_by_status(self):
        """Return how many child runs are in each status (one query)."""
        return dict(
            db.session.execute(
                select(WorkflowRun.status, func.count())
                .where(WorkflowRun.parent_id == self.id)
                .group_by(WorkflowRun.status)
            ).all()
        )

    def children(self, page=1, size=25):
        """Return ``(runs, total)``: a page of the child runs, in spawn order.

        :param page: page number, from 1.
        :param size: runs per page.
        """
        query = (
            select(WorkflowRun)
            .join(TaskRun, TaskRun.id == WorkflowRun.parent_task_id)
            .where(WorkflowRun.parent_id == self.model.id)
            .order_by(TaskRun.position, WorkflowRun.spawn_index)
        )
        pagination = db.paginate(query, page=page, per_page=size, error_out=False)
        return [self._wrap(m) for m in pagination.items], pagination.total

    @property
    def status(self):
        """The stored status of the run (see :meth:`compute_status`)."""
        return self.model.status

    @property
    def tasks(self):
        """The run's :class:`Task` objects, in graph order."""
        return [
            Task(t)
            for t in TaskRun.query.filter_by(workflow_id=self.model.id).order_by(
                TaskRun.position
            )
        ]

    def task_rows(self):
        """The columns a listing shows of the run's tasks, in graph order.

        One Core query, lighter than :attr:`tasks` for big runs: no ORM
        objects, no result or traceback, and the signature (which holds a
        node's ``key``) only of the nodes added at run time.
        """
        declared = case((TaskRun.node_key.isnot(None), TaskRun.signature), else_=null())
        return db.session.execute(
            select(
                TaskRun.id,
                TaskRun.name,
                TaskRun.position,
                TaskRun.kind,
                declared.label("signature"),
                TaskRun.status,
                TaskRun.message,
                TaskRun.progress,
                TaskRun.attempt,
                TaskRun.retries,
                TaskRun.queued_at,
                TaskRun.started_at,
                TaskRun.finished_at,
            )
            .where(TaskRun.workflow_id == self.model.id)
            .order_by(TaskRun.position)
        ).all()

    def task_list_json(self):
        """The listing of the run's tasks as JSON text rendered by PostgreSQL.

        The same list as :meth:`task_rows` gives, as
        :class:`~invenio_wtflow.schemas.TaskSchema` dumps it, with each task's
        ``depends_on``; PostgreSQL builds it (``json_agg``) at a fraction of
        the cost of building it in Python. Each task is a row whose columns
        are named as the schema's keys, in their order, and the edges are
        grouped once for the whole run: both cost PostgreSQL less than a
        ``json_build_object`` and a subquery per task. ``None`` on other
        databases.
        """
        if db.session.get_bind().dialect.name != "postgresql":
            return None
        return db.session.execute(
            _TASK_LIST_JSON, {"workflow_id": self.model.id}
        ).scalar_one()

    def dependencies(self):
        """Map each task id of the run to the ids it depends on (one query)."""
        rows = db.session.execute(
            select(TaskDependency.task_id, TaskDependency.depends_on_id)
            .join(TaskRun, TaskRun.id == TaskDependency.task_id)
            .where(TaskRun.workflow_id == self.model.id)
        ).all()
        edges = {}
        for task_id, depends_on_id in rows:
            edges.setdefault(task_id, []).append(depends_on_id)
        return edges

    @classmethod
    def search(cls, page=1, size=25, created_by=None, **filters):
        """Return ``(runs, total)``: a page of runs, newest first.

        :param page: page number, from 1.
        :param size: runs per page.
        :param created_by: only runs created by this user id.
        :param filters: ``name``, ``status`` and/or ``parent_id`` to match
            exactly.
        """
        query = select(WorkflowRun)
        for field in ("name", "status", "parent_id"):
            if filters.get(field) is not None:
                query = query.where(getattr(WorkflowRun, field) == filters[field])
        if created_by is not None:
            query = query.where(WorkflowRun.created_by == created_by)
        query = query.order_by(WorkflowRun.created.desc(), WorkflowRun.id.desc())
        pagination = db.paginate(query, page=page, per_page=size, error_out=False)
        return [cls._wrap(m) for m in pagination.items], pagination.total

    def wait(self, timeout=None, interval=1.0):
        """Block until the run has finished (succeeded, failed or was cancelled).

        Like ``AsyncResult.get()`` for a canvas, without raising the run's
        error: read :attr:`status` and :attr:`result` after it. On
        PostgreSQL the run's last transaction wakes the waiter
        (``LISTEN``/``NOTIFY``), whose own connection reads the status
        (the session only finds a run no other transaction can see yet,
        finished); other databases are polled. The session's
        transaction is committed first: the run's tasks finish in other
        transactions, which an open one may not see (SQLite reads from a
        snapshot until its transaction ends). It returns once the run has
        finished since the call began (a run restarted meanwhile may be
        running again).

        :param timeout: seconds to wait at most (``None``: no limit).
        :param interval: seconds between two reads of the status when
            nothing is heard (the polling period off PostgreSQL).
        :returns: the run: its :attr:`status` is the finished status the
            wait saw (no further read); other attributes are read again
            when next used.
        :raises WaitTimeoutError: when the run is still unfinished at
            ``timeout``.
        :raises WorkflowNotFoundError: when the run no longer exists.
        :raises ValueError: when ``interval`` is not positive or
            ``timeout`` is negative.
        """
        if not interval > 0:
            raise ValueError(
                f"interval must be a positive number of seconds, not {interval!r}."
            )
        if timeout is not None and not timeout >= 0:
            raise ValueError(
                f"timeout must be None or a number of seconds >= 0, not {timeout!r}."
            )
        # A run just created joins the session now, not on the path from the
        # notification to the return.
        model = self.model
        db.session.commit()
        listening = waiting.notifies(db.session)
        # Polled, the first read is the session's; listening, the listener's.
        status = None if listening else self._committed_status()
        if status is None or not WorkflowStatus(status).is_terminal:
            try:
                status = waiting.wait(
                    db.engine, self.id, timeout=timeout, interval=interval
                )
            except WorkflowNotFoundError:
                if not listening:
                    raise
                # A run only this session's outer transaction holds (as in
                # pytest-invenio's ``db`` fixture) is found there, finished.
                status = self._committed_status()
                if not WorkflowStatus(status).is_terminal:
                    raise
        set_committed_value(model, "status", status)
        return self

    def _committed_status(self):
        """Read the run's status through the session, then end its transaction.

        A new transaction then sees the run finish.

        :raises WorkflowNotFoundError: when the session sees no such run.
        """
        status = db.session.execute(
            select(WorkflowRun.status).where(WorkflowRun.id == self.id)
        ).scalar()
        if status is None:
            raise WorkflowNotFoundError(self.id)
        db.session.commit()
        return status

    @property
    def result(self):
        """The run's result, as plain Celery would return it for the canvas.

        ``None`` until the run has succeeded. A run with ``populate`` and no
        ``definition`` returns its callbacks' results, by method name.
        """
        if self.model.status != WorkflowStatus.SUCCESS.value:
            return None
        if self.model.output is None:
            return callback_results([self.model])[self.model.id]
        results = dict(
            db.session.query(TaskRun.position, TaskRun.result).filter(
                TaskRun.workflow_id == self.model.id
            )
        )
        return resolve(self.model.output, results)

    @default_rule
    def compute_status(self, counts):
        """Derive the run's status from its tasks; override to change the rule.

        :param counts: mapping of task status to number of tasks.
        :returns: a :class:`~invenio_wtflow.models.WorkflowStatus` (or value).
        """
        return default_status(counts)

    def history(self):
        """Every recorded change of the run's row, oldest first."""
        return _history(self.model)

    def __repr__(self):
        """Show name, id and status."""
        return f"<{type(self).__name__} {self.name} {self.id} {self.status}>"


def definition_name(definition):
    """Return the registered name of a definition given by name or class.

    :raises UnknownWorkflowError: when it is not registered.
    """
    if isinstance(definition, str):
        current_wtflow.get_workflow_class(definition)
        return definition
    for name in current_wtflow.entries:
        if current_wtflow.workflow_class(name) is definition:
            return name
    raise UnknownWorkflowError(getattr(definition, "__name__", definition))


def spawn_child(execution, definition, data=None, key=None, lease=None):
    """Spawn a child run of a running task (see ``WorkflowTask.spawn``).

    :param execution: the running attempt's :class:`~invenio_wtflow.tasks.Execution`.
    :param lease: the task's lease in seconds, renewed by spawning.
    """
    return spawn_children(execution, definition, [data], [key], lease)[0]


def spawn_children(execution, definition, data, keys=None, lease=None):
    """Spawn child runs of a running task at once (see ``WorkflowTask.spawn_many``).

    :param execution: the running attempt's :class:`~invenio_wtflow.tasks.Execution`.
    :param data: a list with the data of each child.
    :param keys: ``None``, or a list with each child's key (or ``None``).
    :param lease: the task's lease in seconds, renewed by spawning.
    :raises InvalidDataError: when ``data`` or ``keys`` is not such a list,
        or an item is not valid data or a valid key.
    """
    if not isinstance(data, (list, tuple)):
        raise InvalidDataError(
            f"data must be a list with the data of each child, not {type(data).__name__}."
        )
    if keys is None:
        keys = [None] * len(data)
    if not isinstance(keys, (list, tuple)) or len(keys) != len(data):
        raise InvalidDataError(
            f"keys must be a list of {len(data)} keys (or None), one per child."
        )
    for key in keys:
        if key is not None and (not isinstance(key, str) or not key or len(key) > 255):
            raise InvalidDataError(
                "key must be a non-empty string of at most 255 chars."
            )
    items = [(_check_data(item), key) for item, key in zip(data, keys)]
    name = definition_name(definition)
    klass = current_wtflow.get_workflow_class(name)
    if not items:
        return []
    spawned = orchestrator.atomic(
        children.spawn_many,
        execution.task_run_id,
        execution.celery_id,
        execution.retries,
        name,
        klass.compile(),
        items,
        lease,
    )
    return [klass._lazy(child_id) for child_id, _ in spawned]


def delegate_attempt(execution, timeout=None, lease=None):
    """Delegate a running attempt (see ``WorkflowTask.delegate``).

    :param execution: the running attempt's :class:`~invenio_wtflow.tasks.Execution`.
    :param timeout: seconds or a :class:`~datetime.timedelta`; by default
        ``WTFLOW_DELEGATE_TIMEOUT``.
    :param lease: the task's lease in seconds, renewed by delegating.
    :returns: the :class:`~invenio_wtflow.engine.delegation.Ticket`.
    """
    if timeout is None:
        timeout = current_app.config["WTFLOW_DELEGATE_TIMEOUT"]
    if isinstance(timeout, Real) and not isinstance(timeout, bool):
        timeout = timedelta(seconds=timeout)
    if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
        raise ValueError(f"timeout must be a positive duration, not {timeout!r}.")
    url = completion_url(execution.workflow_id, execution.task_run_id)
    token = delegation.new_token()
    deadline = utcnow() + timeout
    attempt = orchestrator.atomic(
        delegation.delegate,
        execution.task_run_id,
        execution.celery_id,
        execution.retries,
        delegation.hash_token(token),
        deadline,
        lease,
    )
    return delegation.Ticket(
        url=url,
        token=token,
        deadline=deadline,
        task_id=execution.task_run_id,
        attempt=attempt,
    )


def completion_url(workflow_id, task_id):
    """Return the URL where an external system completes a delegated task.

    Built from ``WTFLOW_API_URL``, else ``SITE_API_URL`` and
    ``WTFLOW_URL_PREFIX``, else with ``url_for`` (see
    :data:`~invenio_wtflow.config.WTFLOW_API_URL`).

    :param workflow_id: the run's id.
    :param task_id: the task run's id.
    :raises RuntimeError: when none of these can build it.
    """
    config = current_app.config
    base = config.get("WTFLOW_API_URL")
    if base is None and config.get("SITE_API_URL"):
        base = config["SITE_API_URL"].rstrip("/") + config["WTFLOW_URL_PREFIX"]
    if base is not None:
        return f"{base.rstrip('/')}/{workflow_id}/tasks/{task_id}/complete"
    try:
        return url_for(
            "invenio_wtflow.task_complete",
            workflow_id=workflow_id,
            task_id=task_id,
            _external=True,
        )
    except (BuildError, RuntimeError) as exc:
        raise RuntimeError(
            "Cannot build the completion URL of a delegated task here: "
            "set WTFLOW_API_URL (or SITE_API_URL)."
        ) from exc


def complete_task(
    task_id, token, status, result=None, message=None, workflow_id=None, origin=None
):
    """Complete a delegated task with its token, in one transaction.

    Transient database errors are retried; a wrong token is refused alike
    whether or not the task exists (see :mod:`~invenio_wtflow.engine.delegation`).

    :param task_id: the task run's id.
    :param token: the token of the task's ticket.
    :param status: ``"success"`` or ``"failure"``.
    :param result: the task's JSON result.
    :param message: the task's message; for a failure, its error's text.
    :param workflow_id: the run the caller named, if any; the task must be its.
    :param origin: who sent the completion, for the log (a client address).
    :returns: ``"applied"``, or ``"replayed"`` for the same completion again.
    :raises MissingTokenError: when ``token`` is empty.
    :raises InvalidTokenError: for a wrong, expired or another task's token.
    :raises CompletionConflictError: when the task cannot take the completion.
    :raises InvalidDataError: for a bad status, message or result.
    """
    if not isinstance(token, str) or not token:
        raise MissingTokenError()
    if status not in delegation.OUTCOMES:
        raise InvalidDataError(
            f"status must be one of {', '.join(delegation.OUTCOMES)}, not {status!r}."
        )
    if message is not None and not isinstance(message, str):
        raise InvalidDataError("message must be a string.")
    return orchestrator.atomic(
        delegation.complete,
        task_id,
        delegation.hash_token(token),
        status,
        ensure_json(result, "The result"),
        message,
        workflow_id,
        origin,
    )


def check_children(task_run_id, ids):
    """Check that every id names a distinct run spawned by the task run.

    :returns: the ids in their canonical form (as strings), in order.
    :raises ValueError: naming the first id that does not.
    """
    ids = [str(_uuid(i)) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("join() got the same child workflow more than once.")
    found = {
        str(id_)
        for (id_,) in db.session.execute(
            select(WorkflowRun.id).where(
                WorkflowRun.id.in_([_uuid(i) for i in ids]),
                WorkflowRun.parent_task_id == _uuid(task_run_id),
            )
        )
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(
            f"Workflow run {missing[0]} was not spawned by this task; "
            "join() only waits for the task's own children."
        )
    return ids


def _uuid(value):
    """Return ``value`` as a :class:`uuid.UUID`, or raise a clear ``ValueError``."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a workflow run id.") from None


def _get(model_class, id_):
    """Load a row by UUID, treating malformed ids as missing."""
    try:
        return db.session.get(model_class, _uuid(id_))
    except ValueError:
        return None


def _check_data(data):
    return ensure_object(data, "Workflow data")


__all__ = ("Task", "Workflow", "TaskStatus", "WorkflowStatus")
