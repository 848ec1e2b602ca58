# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Workflows that grow their own graph: ``populate()`` and callbacks.

A :class:`~invenio_wtflow.api.Workflow` subclass with a ``populate(ctx)``
method has one more node than its definition: a ``populate`` node, which the
root's orchestrator runs itself rather than a worker. ``populate()`` declares
nodes with :meth:`Context.add` (tasks, sub-workflows) and
:meth:`Context.add_callback` (methods of the class, run by the orchestrator
once their dependencies succeeded); each declaration has an identity (its
key, or a hash of its data), so declaring it again changes nothing:
``populate()`` must be idempotent, and in tests
(``WTFLOW_CHECK_POPULATE``) the orchestrator calls it twice and fails the run
when the second call changes the graph.

The orchestrator runs under the root lock, one pass per root at a time.
A node of a dynamic run that succeeds puts the run's ``populate`` node back
to ``queued``, and a callback whose dependencies succeed becomes ``queued``;
either asks the root for a pass. Requests are coalesced on the root row: the
first one publishes an ``invenio_wtflow.orchestrate`` message after the
commit, later ones only count until that pass runs, and the pass runs
everything queued in the tree, including what its own steps queue, until
nothing is left. Because the queued ``populate`` node counts as unfinished, a
run is never ``success`` while its orchestrator still has work to do.
"""

import copy
import hashlib
import json
import logging
import traceback
import uuid
from dataclasses import dataclass, field

from celery import Task as CeleryTask
from celery.canvas import Signature
from flask import current_app
from invenio_db import db
from sqlalchemy import func, select

from ..errors import (
    InvalidDataError,
    InvalidDefinitionError,
    NodeConflictError,
    PopulateNotIdempotentError,
)
from ..models import NodeKind, TaskDependency, TaskRun, TaskStatus, WorkflowRun, utcnow
from . import orchestrator
from .dispatch import Message, dispatcher
from .graph import Node, compile_canvas, ensure_json, ensure_object

logger = logging.getLogger(__name__)

ORCHESTRATE_TASK = "invenio_wtflow.orchestrate"
"""Name of the Celery task that runs one orchestrator pass of a root."""

SUBWORKFLOW_TASK = "invenio_wtflow.subworkflow"
"""Name of the Celery task that runs a sub-workflow node."""

POPULATE_KEY = NodeKind.POPULATE.value
"""``node_key`` of a run's ``populate`` node."""

QUEUED, SUCCESS = TaskStatus.QUEUED.value, TaskStatus.SUCCESS.value
STOPPED = (TaskStatus.FAILURE.value, TaskStatus.CANCELLED.value)


def populates(cls):
    """Whether a definition class grows its graph with ``populate()``."""
    return cls is not None and callable(getattr(cls, "populate", None))


def populate_node(position):
    """The compiled ``populate`` node of a dynamic definition."""
    return Node(position=position, name="populate", kind=POPULATE_KEY, key=POPULATE_KEY)


@dataclass(frozen=True)
class NodeRef:
    """A node of a run, as ``populate()`` and callbacks name it in ``after``."""

    label: str
    node_key: str = None
    position: int = None


@dataclass
class _Declaration:
    kind: str
    name: str
    node_key: str
    signature: dict
    after: list = field(default_factory=list)


class Context:
    """What ``populate()`` and a callback receive: the run, and ways to grow it.

    :param workflow: the locked :class:`~invenio_wtflow.models.WorkflowRun`.
    :param callback: the callback's task row, when running a callback.
    """

    def __init__(self, workflow, callback=None):
        """Look at ``workflow``; nothing is written until the orchestrator applies."""
        self._model = workflow
        self._callback = callback
        self._declared = []
        self._added_tasks = []
        self._static = None
        self._updates = {}
        self.data = copy.deepcopy(workflow.data)
        """A copy of the run's data (see :meth:`update_data` to change it)."""

    @property
    def workflow(self):
        """The :class:`~invenio_wtflow.api.Workflow` being orchestrated."""
        from ..api import Workflow

        return Workflow._wrap(self._model)

    def add(self, task, data=None, key=None, after=None):
        """Declare a task or sub-workflow node; declaring it again is a no-op.

        :param task: a ``@workflow_task`` (or its registered name, or a Celery
            signature of one), or a registered workflow definition (its name or
            class), which runs as a sub-workflow with the run's data and
            ``data`` merged over it.
        :param data: a JSON object: keyword arguments of the task (over the
            run's data, as for a bare task), or the sub-workflow's data.
        :param key: the node's identity among the nodes of the same name;
            by default the hash of ``data``.
        :param after: nodes (or lists of nodes) that must succeed first.
        :returns: a :class:`NodeRef` to use in ``after``.
        :raises InvalidDataError: when ``data`` is not a JSON object.
        :raises InvalidDefinitionError: when ``task`` is neither a workflow
            task nor a registered definition.
        """
        data = ensure_object(data, "Node data")
        name, signature, what = _node_signature(task, data)
        ref = self._declare(None, name, key, signature, after, what)
        self._added_tasks.append(ref)
        return ref

    def add_callback(self, method, after=None, key=None):
        """Declare a callback: a method of the class the orchestrator runs.

        It runs once every node of ``after`` has succeeded, receives a
        :class:`Context` (so it may add more work), and its JSON return value
        is its result.

        :param method: the method's name (or the bound method).
        :param after: nodes (or lists of nodes) that must succeed first.
        :param key: identity, to add the same callback more than once.
        :returns: a :class:`NodeRef`.
        """
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        _callback_method(self.workflow, name)
        signature = _signature([], {}, bare=False)
        return self._declare(NodeKind.CALLBACK.value, name, key, signature, after, name)

    def _declare(self, kind, name, key, signature, after, what):
        """Record a declaration; its identity is what it runs, and its key or data.

        :param what: what the node runs (a task, definition or method name).
        """
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidDataError("key must be a non-empty string.")
        identity = [kind or "task", what, key if key is not None else signature]
        signature["key"] = key
        node_key = hashlib.sha256(
            json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        short = what.rsplit(".", 1)[-1]
        label = short if key is None else f"{short}:{key}"
        refs = _flatten(after)
        self._declared.append(_Declaration(kind, name, node_key, signature, refs))
        return NodeRef(label=label, node_key=node_key)

    def all_tasks(self):
        """The definition's tasks and the task nodes declared so far by this call."""
        if self._static is None:
            self._static = [
                NodeRef(label=name.rsplit(".", 1)[-1], position=position)
                for position, name in db.session.execute(
                    select(TaskRun.position, TaskRun.name)
                    .where(
                        TaskRun.workflow_id == self._model.id,
                        TaskRun.kind.is_(None),
                        TaskRun.node_key.is_(None),
                    )
                    .order_by(TaskRun.position)
                )
            ]
        return self._static + self._added_tasks

    def tasks(self, name=None):
        """The run's task nodes as they are now, in graph order.

        :param name: only tasks with this name (or last dotted part of it).
        :returns: :class:`~invenio_wtflow.api.Task` objects (status, result...).
        """
        from ..api import Task

        rows = (
            TaskRun.query.filter(
                TaskRun.workflow_id == self._model.id,
                TaskRun.kind.is_(None),
            )
            .order_by(TaskRun.position)
            .all()
        )
        return [
            Task(row)
            for row in rows
            if name is None or name in (row.name, row.name.rsplit(".", 1)[-1])
        ]

    def result(self, ref):
        """The stored result of a node (``None`` until it succeeded).

        :param ref: a :class:`NodeRef` or a :class:`~invenio_wtflow.api.Task`.
        """
        row = _row_of(self._model.id, ref)
        return row.result if row is not None else None

    def update_data(self, **values):
        """Merge ``values`` into the run's data (callbacks only).

        The next ``populate()`` sees them: a callback can leave the wiring of
        what it decided to ``populate()``.
        """
        if self._callback is None:
            raise InvalidDefinitionError(
                "populate() must be idempotent: it cannot change the run's data."
            )
        values = ensure_json(values, "Workflow data")
        self._updates.update(values)
        self.data.update(copy.deepcopy(values))


def _callback_method(instance, name):
    """Return the callback method ``name`` of a definition class.

    :raises InvalidDefinitionError: when the class has no such method, or it
        is one of :class:`~invenio_wtflow.api.Workflow`'s own (``stop``,
        ``restart``...), which are not callbacks.
    """
    from ..api import Workflow

    method = getattr(instance, name, None) if name else None
    if not callable(method) or hasattr(Workflow, name) or name.startswith("_"):
        raise InvalidDefinitionError(
            f"{type(instance).__name__} has no callback method {name!r} (a "
            "callback is a public method of the class, not one of Workflow's)."
        )
    return method


def _flatten(after):
    if after is None:
        return []
    if isinstance(after, (list, tuple)):
        return [ref for item in after for ref in _flatten(item)]
    return [after]


def _signature(args, kwargs, bare, options=None):
    return {
        "args": args,
        "kwargs": kwargs,
        "options": options or {},
        "bare": bare,
        "input": None,
    }


def _node_signature(task, data):
    """Return ``(task name, stored signature, what it runs)`` of a node to add."""
    from ..api import definition_name
    from ..proxies import current_wtflow

    if isinstance(task, type) or (
        isinstance(task, str) and current_wtflow.workflow_class(task) is not None
    ):
        name = definition_name(task)
        signature = _signature([name], {"data": data}, bare=False)
        return SUBWORKFLOW_TASK, signature, f"workflow:{name}"
    if isinstance(task, (CeleryTask, Signature)) or hasattr(
        task, "_get_current_object"
    ):
        sig = task if isinstance(task, Signature) else task.si()
        nodes = compile_canvas(sig).nodes
        if len(nodes) != 1:
            raise InvalidDefinitionError(
                f"{task!r} is a canvas; add its tasks one by one."
            )
        node = nodes[0]
        kwargs = {**node.kwargs, **data}
        signature = _signature(node.args, kwargs, bare=True, options=node.options)
        return node.name, signature, node.name
    if isinstance(task, str) and task:
        compile_canvas(Signature(task))  # refuses a task that is not a workflow task
        return task, _signature([], data, bare=True), task
    raise InvalidDefinitionError(
        f"{task!r} is neither a workflow task nor a registered workflow definition."
    )


def _row_of(workflow_id, ref):
    query = TaskRun.query.filter(TaskRun.workflow_id == workflow_id)
    if isinstance(ref, NodeRef):
        if ref.node_key is not None:
            return query.filter(TaskRun.node_key == ref.node_key).one_or_none()
        return query.filter(TaskRun.position == ref.position).one_or_none()
    return query.filter(TaskRun.id == getattr(ref, "id", ref)).one_or_none()


#
# Applying declarations
#
def apply(uow, workflow, ctx):
    """Insert the nodes and edges ``ctx`` declared that the run lacks.

    A node declared again is left alone; it gains the new dependencies named
    for it while it is still ``pending``. New nodes whose dependencies have
    all succeeded are queued at once.

    :returns: the number of nodes added or changed (0: the graph is unchanged).
    :raises NodeConflictError: when a key names a node with other arguments.
    :raises InvalidDefinitionError: on a dependency that is not a node of the
        run, or new dependencies for a node that has already run.
    """
    rows = TaskRun.query.filter(TaskRun.workflow_id == workflow.id).all()
    by_key = {r.node_key: r for r in rows if r.node_key is not None}
    by_position = {r.position: r for r in rows}
    by_id = {r.id: r for r in rows}
    _, dependencies = orchestrator.edges(workflow.id)
    position = max(by_position, default=-1) + 1
    changes, ready, new_edges = 0, [], []

    def resolve(ref):
        if isinstance(ref, NodeRef):
            row = (
                by_key.get(ref.node_key)
                if ref.node_key is not None
                else by_position.get(ref.position)
            )
        else:
            row = by_id.get(getattr(ref, "id", None))
        if row is None:
            raise InvalidDefinitionError(
                f"{ref!r} in after= is not a node of workflow {workflow.id}; "
                "declare a node before the nodes that depend on it."
            )
        return row

    for decl in ctx._declared:
        deps = {resolve(ref) for ref in decl.after}
        row = by_key.get(decl.node_key)
        if row is None:
            row = TaskRun(
                id=uuid.uuid4(),
                workflow_id=workflow.id,
                position=position,
                name=decl.name,
                kind=decl.kind,
                node_key=decl.node_key,
                signature=decl.signature,
                status=TaskStatus.PENDING.value,
                attempt=0,
                retries=0,
                remaining=sum(1 for d in deps if d.status != SUCCESS),
            )
            position += 1
            db.session.add(row)
            by_key[decl.node_key] = by_position[row.position] = by_id[row.id] = row
            new_edges += [(row.id, d.id) for d in deps]
            changes += 1
            _ready_or_doomed(row, deps, ready)
            continue
        if row.name != decl.name or row.signature != decl.signature:
            raise NodeConflictError(
                f"Node {decl.name} with key {decl.signature.get('key')!r} of workflow "
                f"{workflow.id} was declared with other arguments before; a key must "
                "always name the same node."
            )
        added = {d for d in deps if d.id not in dependencies.get(row.id, ())}
        if not added:
            continue
        if row.status != TaskStatus.PENDING.value:
            raise InvalidDefinitionError(
                f"Node {row.name} (node {row.position}) is {row.status}; it cannot "
                "gain new dependencies any more."
            )
        row = orchestrator._lock_tasks(TaskRun.id == row.id)[0]
        row.remaining += sum(1 for d in added if d.status != SUCCESS)
        new_edges += [(row.id, d.id) for d in added]
        changes += 1
    db.session.flush()
    if new_edges:
        db.session.execute(
            TaskDependency.__table__.insert(),
            [{"task_id": t, "depends_on_id": d} for t, d in new_edges],
        )
    if ready:
        orchestrator._queue(uow, ready)
    return changes


def _ready_or_doomed(row, deps, ready):
    """Queue a new node whose dependencies succeeded; cancel one that can't run."""
    dead = [d for d in deps if d.status in STOPPED]
    if dead:
        row.status = TaskStatus.CANCELLED.value
        row.finished_at = utcnow()
        row.message = (
            f"Cancelled: upstream task {dead[0].name} (node {dead[0].position}) "
            f"is {dead[0].status}."
        )
    elif row.remaining == 0:
        ready.append(row)


#
# Requests and passes
#
def request(uow, roots):
    """Ask the orchestrator of each root for a pass (coalesced).

    Called under the root lock. The first request since the last pass
    publishes a message after the commit; the others only count. Requests
    made by a pass itself are served by that pass.

    :param roots: the locked root :class:`~invenio_wtflow.models.WorkflowRun` rows.
    """
    serving = getattr(uow, "_wtflow_orchestrating", None)
    now = utcnow()
    for root in roots:
        root.orchestration_requests = (root.orchestration_requests or 0) + 1
        root.orchestration_requested_at = now
        if root.id == serving or root.orchestration_queued_at is not None:
            continue
        root.orchestration_queued_at = now
        dispatcher(uow).messages.append(Message.for_orchestration(root.id))


def postpone(root_id):
    """Seconds a pass should still wait for its tree to go quiet, or ``None``.

    A pass waits until no request came for ``WTFLOW_ORCHESTRATION_DELAY``,
    but no longer than ``WTFLOW_ORCHESTRATION_MAX_DELAY`` after the first
    request it serves. Reads without locking: it is only a hint.
    """
    delay = current_app.config["WTFLOW_ORCHESTRATION_DELAY"]
    if not delay:
        return None
    row = db.session.execute(
        select(
            WorkflowRun.orchestration_queued_at,
            WorkflowRun.orchestration_requested_at,
        ).where(WorkflowRun.id == root_id)
    ).one_or_none()
    db.session.rollback()
    if row is None or row.orchestration_queued_at is None:
        return None
    now = utcnow()
    quiet = (now - row.orchestration_requested_at).total_seconds()
    waited = (now - row.orchestration_queued_at).total_seconds()
    limit = current_app.config["WTFLOW_ORCHESTRATION_MAX_DELAY"]
    if quiet >= delay or waited >= limit:
        return None
    return min(delay - quiet, limit - waited)


def repopulate(uow, workflow):
    """Queue a dynamic run's ``populate`` node again (a node of it succeeded)."""
    rows = orchestrator._lock_tasks(
        TaskRun.workflow_id == workflow.id, TaskRun.node_key == POPULATE_KEY
    )
    if not rows:
        return
    node = rows[0]
    if node.status == SUCCESS:
        orchestrator._queue(uow, [node])
    elif node.status == QUEUED:
        request(uow, [db.session.get(WorkflowRun, workflow.root_id)])


def _queued_nodes(root_id):
    """Lock the nodes of a tree waiting for the orchestrator, in run order."""
    ids = [
        row.id
        for row in db.session.execute(
            select(TaskRun.id)
            .join(WorkflowRun, WorkflowRun.id == TaskRun.workflow_id)
            .where(
                WorkflowRun.root_id == root_id,
                TaskRun.kind.isnot(None),
                TaskRun.status == QUEUED,
            )
            .order_by(WorkflowRun.created, WorkflowRun.id, TaskRun.position)
        )
    ]
    if not ids:
        return []
    locked = {t.id: t for t in orchestrator._lock_tasks(TaskRun.id.in_(ids))}
    return [locked[i] for i in ids if i in locked]


def orchestrate(uow, root_id):
    """Run one orchestrator pass of a tree: every queued populate and callback.

    Takes the root lock for the whole pass, so no two passes of a root run at
    once and every request made meanwhile waits for it. Steps run in the
    order of their runs' creation and their positions; what the steps queue
    (a callback made ready, a ``populate`` asked for again) runs in the same
    pass, up to ``WTFLOW_ORCHESTRATION_STEPS`` steps.

    :param root_id: the id of the root run (or of any run of the tree).
    :returns: the number of steps run.
    """
    root = orchestrator.lock_workflow(root_id)
    if root.root_id != root.id:
        root = orchestrator.lock_workflow(root.root_id)
    uow._wtflow_orchestrating = root.id
    budget = current_app.config["WTFLOW_ORCHESTRATION_STEPS"]
    steps = 0
    while True:
        nodes = _queued_nodes(root.id)
        if not nodes:
            break
        for node in nodes:
            if node.status != QUEUED:  # cancelled by an earlier step
                continue
            workflow = orchestrator.lock_workflow(node.workflow_id)
            if steps >= budget:
                orchestrator.fail_task(
                    uow,
                    workflow,
                    node,
                    f"OrchestrationError: the orchestrator ran {budget} steps in one "
                    "pass without settling (a callback that always adds work?).",
                )
                continue
            _run_step(uow, workflow, node)
            steps += 1
    root.orchestration_queued_at = None
    root.orchestrations = (root.orchestrations or 0) + 1
    return steps


def _run_step(uow, workflow, node):
    """Run a ``populate`` node or a callback and record its outcome."""
    from ..api import Workflow

    instance = Workflow._wrap(workflow)
    node.status = TaskStatus.RUNNING.value
    node.started_at = utcnow()
    try:
        with db.session.begin_nested():
            if node.kind == NodeKind.POPULATE.value:
                result = _populate(uow, instance, workflow)
            else:
                result = _callback(uow, instance, workflow, node)
    except Exception as exc:
        if orchestrator._is_transient(exc):
            raise
        logger.exception("%s of workflow %s failed.", node.name, workflow.id)
        orchestrator.fail_task(
            uow, workflow, node, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        )
        return
    orchestrator.complete(uow, workflow, node, result)


def _populate(uow, instance, workflow):
    ctx = Context(workflow)
    instance.populate(ctx)
    added = apply(uow, workflow, ctx)
    if current_app.config["WTFLOW_CHECK_POPULATE"]:
        again = Context(workflow)
        instance.populate(again)
        changed = apply(uow, workflow, again)
        if changed:
            raise PopulateNotIdempotentError(
                f"populate() of {workflow.name} is not idempotent: called twice in "
                f"a row, the second call changed {changed} node(s) of the graph."
            )
    total = db.session.execute(
        select(func.count()).where(
            TaskRun.workflow_id == workflow.id, TaskRun.node_key.isnot(None)
        )
    ).scalar_one()
    return {"added": added, "nodes": total - 1}


def _callback(uow, instance, workflow, node):
    method = _callback_method(instance, node.name)
    ctx = Context(workflow, callback=node)
    result = ensure_json(method(ctx), f"Result of callback {node.name}")
    apply(uow, workflow, ctx)
    if ctx._updates:
        workflow.data = {**workflow.data, **ctx._updates}
    return result


def callback_results(runs):
    """Return ``{run id: {label: result}}`` of the callbacks of dynamic runs.

    The result of a run whose definition has no canvas: each callback's
    result under its method name (``name:key`` when added with a key).
    """
    if not runs:
        return {}
    results = {run.id: {} for run in runs}
    for workflow_id, name, signature, result in db.session.execute(
        select(TaskRun.workflow_id, TaskRun.name, TaskRun.signature, TaskRun.result)
        .where(
            TaskRun.workflow_id.in_(list(results)),
            TaskRun.kind == NodeKind.CALLBACK.value,
        )
        .order_by(TaskRun.position)
    ):
        key = (signature or {}).get("key")
        results[workflow_id][name if key is None else f"{name}:{key}"] = result
    return results
