# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The ``@workflow_task`` decorator, its Celery base class and the sweeper task.

A workflow task is an ordinary Celery task. When a message carries the
``wtflow_task`` header (the engine published it), the base class claims the
attempt in the database, builds the call's arguments from the stored graph
(upstream results, partial arguments, workflow data), runs the body and
records the outcome, queueing what becomes ready; the messages of newly ready
tasks are published after that commit. Without the header (a direct call or a
plain ``delay()``) it behaves exactly like a plain Celery task and writes
nothing.
"""

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from numbers import Number

from celery import shared_task
from celery.exceptions import Retry
from celery.local import Proxy
from flask import has_app_context
from flask_celeryext import AppContextTask
from invenio_db import db

from .engine import children, delegation, dynamic, orchestrator
from .engine.children import Join
from .engine.delegation import Ticket
from .engine.dispatch import (
    HEADER,
    INPUT_HEADER,
    UNFLUSHED_HEADER,
    Message,
    publish,
)
from .engine.dispatch import requeue_stale as _requeue_stale
from .engine.dynamic import ORCHESTRATE_TASK, SUBWORKFLOW_TASK
from .engine.graph import BARE_OPTION, call_arguments, ensure_json, resolve
from .errors import WorkflowNotFoundError
from .models import TaskRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    """What the running attempt knows about its place in the workflow."""

    task_run_id: str
    celery_id: str
    workflow_id: str
    root_id: str
    position: int
    retries: int
    args: tuple
    kwargs: dict
    dependants: int = 0
    workflow_name: str = None


def _header(request, name):
    """Return a header of the message, or ``None``."""
    headers = request.headers or {}
    found = headers.get(name)
    return getattr(request, name, None) if found is None else found


def _task_run_id(request):
    """Return the task run id a message belongs to, or ``None``."""
    return _header(request, HEADER) or None


def _eta(when):
    """Turn a :class:`~celery.exceptions.Retry`'s ``when`` into a datetime."""
    now = datetime.now(tz=timezone.utc)
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if isinstance(when, Number):
        return now + timedelta(seconds=when)
    return now


class WorkflowTask(AppContextTask):
    """Celery base class of the tasks a workflow runs.

    Subclasses flask-celeryext's ``AppContextTask`` so that the body runs in
    the Flask application context, as every Invenio task does.
    """

    abstract = True

    def __call__(self, *args, **kwargs):
        """Run as a workflow step when the engine sent the message."""
        task_run_id = _task_run_id(self.request)
        if task_run_id is None or self.execution is not None:
            # A plain call, or the step's body calling the task directly.
            return super().__call__(*args, **kwargs)
        if has_app_context():
            return self._run_step(task_run_id)
        with self.app.flask_app.app_context():
            return self._run_step(task_run_id)

    def apply(self, args=None, kwargs=None, *more, **options):
        """Run eagerly; a workflow step never raises out of the engine's loop.

        Celery runs an eager retry as a nested ``apply`` that follows
        ``task_eager_propagates``; the outcome of a step is in the database.
        """
        if HEADER in (options.get("headers") or {}):
            options["throw"] = False
        return super().apply(args, kwargs, *more, **options)

    def __ror__(self, other):
        """Let a bare task follow a canvas: ``group(a, b) | publish``."""
        return other | self.bare()

    def __or__(self, other):
        """Let a bare task start a chain: ``extract | group(a, b)``."""
        return self.bare() | other

    def bare(self):
        """Signature of this task that receives the workflow data as kwargs."""
        return self.si().set(**{BARE_OPTION: True})

    def _run_step(self, task_run_id):
        """Claim the attempt, run the body, record the outcome."""
        request = self.request
        retries = request.retries or 0
        task = orchestrator.atomic(
            orchestrator.claim,
            task_run_id,
            request.id,
            retries,
            getattr(self, "lease", None),
            upstream=_header(request, INPUT_HEADER) is not False,
            unflushed=_header(request, UNFLUSHED_HEADER) is True,
        )
        if task is None:
            logger.info(
                "Attempt %s of task run %s is not current; ignoring this delivery.",
                request.id,
                task_run_id,
            )
            return None
        # The claim is committed (on PostgreSQL, as its statement ends): a
        # transient error while the arguments are read retries the reads only.
        try:
            execution = orchestrator.atomic(
                _execution, task, request.id, retries, self.run
            )
        except Exception as exc:
            _record_failure(task_run_id, request.id, retries, exc)
            raise
        request.wtflow = execution
        try:  # current_task is this task already: Celery's tracer pushed it
            result = self.run(*execution.args, **execution.kwargs)
            joining = isinstance(result, Join)
            delegated = isinstance(result, Ticket)
            if not (joining or delegated):
                stored = ensure_json(result, f"Result of task {self.name}")
            # The body's own database work is committed before the engine
            # records success, so a retried engine transaction cannot lose it.
            if db.session().in_transaction():
                db.session.commit()
        except Retry as exc:
            db.session.rollback()
            orchestrator.atomic(
                orchestrator.retry,
                task_run_id,
                request.id,
                retries,
                str(exc.exc if exc.exc is not None else exc),
                _eta(exc.when),
            )
            raise
        except Exception as exc:
            _record_failure(task_run_id, request.id, retries, exc)
            raise
        if joining:
            orchestrator.atomic(children.join, task_run_id, request.id, retries, result)
            return None
        if delegated:
            # The token stays out of Celery's result backend and logs.
            orchestrator.atomic(
                delegation.wait, task_run_id, request.id, retries, result
            )
            return None
        orchestrator.record_success(
            task_run_id,
            request.id,
            stored,
            retries,
            execution.dependants,
            (execution.root_id, execution.workflow_id),
            execution.workflow_name,
            getattr(self, "lease", None),
        )
        return result

    def retry(self, args=None, kwargs=None, *more, **options):
        """Retry like Celery; inside a workflow, with the attempt's arguments.

        The engine's messages carry no arguments (they are computed from the
        database when the attempt is claimed), so the retry message gets the
        computed ones, which keeps Celery's argument check happy.
        """
        execution = self.execution
        if execution is not None and args is None and kwargs is None:
            args, kwargs = execution.args, execution.kwargs
        return super().retry(args, kwargs, *more, **options)

    #
    # What a bound task's body can use
    #
    @property
    def execution(self):
        """The current :class:`~invenio_wtflow.tasks.Execution`, or ``None`` outside a workflow."""
        return getattr(self.request, "wtflow", None)

    def _require_execution(self):
        execution = self.execution
        if execution is None:
            raise RuntimeError(
                f"Task {self.name} is not running as part of a workflow."
            )
        return execution

    @property
    def workflow(self):
        """The :class:`~invenio_wtflow.api.Workflow` this attempt belongs to."""
        from .api import Workflow

        return Workflow.get(self._require_execution().workflow_id)

    def update_status(self, message=None, progress=None):
        """Record a message and/or progress (0..1) for the running attempt.

        Also renews the attempt's lease (see :meth:`heartbeat`).

        The change is committed at once (together with anything the body left
        pending in the session), so that watchers see it while the task runs.

        :param message: a short human-readable message.
        :param progress: a number between 0 and 1.
        :returns: whether the attempt is still current (``False`` once stopped).
        """
        execution = self._require_execution()
        if progress is not None and not 0 <= progress <= 1:
            raise ValueError(f"progress must be between 0 and 1, not {progress!r}")
        return orchestrator.atomic(
            orchestrator.report,
            execution.task_run_id,
            execution.celery_id,
            message,
            progress,
            execution.retries,
            getattr(self, "lease", None),
        )

    def heartbeat(self):
        """Show that the running attempt is alive: renew its lease.

        Call it from long bodies that do not report progress, more often than
        the lease (``WTFLOW_TASK_LEASE`` or the task's ``lease`` option).

        :returns: whether the attempt is still current (``False`` once stopped).
        """
        return self.update_status()

    def spawn(self, definition, data=None, key=None):
        """Create and start a child workflow of this task, once.

        The child is committed (with anything the body left pending in the
        session) and its first tasks are published at once (unless its
        definition's ``max_runs`` makes it wait for a slot). Spawning renews
        this attempt's lease. Its identity
        within this task is the hash of the definition name and data, or
        ``key``: spawning the same identity again, for example when this task
        is retried, returns the existing child instead (restarting it if it
        failed or was cancelled; a successful child is not run again).

        :param definition: the registered name of a definition, or a
            registered ``Workflow`` subclass.
        :param data: the child's data (a JSON object).
        :param key: optional identity replacing the hash of the data.
        :returns: the child :class:`~invenio_wtflow.api.Workflow`.
        :raises SpawnConflictError: when ``key`` names a child spawned with
            another definition or other data.
        """
        from .api import spawn_child

        return spawn_child(
            self._require_execution(),
            definition,
            data,
            key,
            lease=getattr(self, "lease", None),
        )

    def spawn_many(self, definition, data, keys=None):
        """Create and start many child workflows of this task, in one transaction.

        What :meth:`spawn` does for each item of ``data``, under one lock and
        one commit: spawning a thousand children this way takes a fraction of
        the time a loop of :meth:`spawn` takes, and the children start only
        once all of them exist. When one item is refused (a key that names a
        child spawned with other data), none is spawned.

        :param definition: the registered name of a definition, or a
            registered ``Workflow`` subclass, of every child.
        :param data: a list with each child's data (a JSON object).
        :param keys: optional list with each child's key (or ``None``).
        :returns: the child :class:`~invenio_wtflow.api.Workflow` runs, in the
            order of ``data``.
        :raises InvalidDataError: when ``data`` or ``keys`` is not such a list.
        :raises SpawnConflictError: when a key names a child spawned with
            another definition or other data.
        """
        from .api import spawn_children

        return spawn_children(
            self._require_execution(),
            definition,
            data,
            keys,
            lease=getattr(self, "lease", None),
        )

    def join(self, children, return_exceptions=False):
        """Wait, without holding a worker, for child workflows to finish.

        Return its value from the body (``return self.join(children)``): the
        task becomes ``waiting``, and ``success`` when the last child has
        finished, with the children's results as its result, in the order
        given (the result of the child itself when ``children`` is one run).
        When a child fails or is cancelled, the task fails and the children
        still running are stopped; with ``return_exceptions``, the failure is
        in the results instead, as ``{"exc_type": "ChildWorkflowError", ...}``.

        :param children: child runs (or their ids) this task spawned, or one.
        :param return_exceptions: collect failures instead of failing.
        :raises ValueError: when a run was not spawned by this attempt's task.
        """
        from .api import Workflow, check_children

        execution = self._require_execution()
        single = not isinstance(children, (list, tuple))
        ids = [
            c.id if isinstance(c, Workflow) else c
            for c in ([children] if single else children)
        ]
        ids = check_children(execution.task_run_id, ids)
        return Join(tuple(ids), bool(return_exceptions), single)

    def delegate(self, timeout=None):
        """Hand this attempt's work to an external system; return its ticket.

        The ticket holds the completion URL and a token, good for this
        attempt only, until ``timeout`` seconds from now. Pass both to the
        external system, then return the ticket from the body: the task
        becomes ``waiting`` and the worker is free. The external system
        completes the task with ``POST <url>`` and ``Authorization: Bearer
        <token>`` (or :meth:`invenio_wtflow.api.Task.complete`); a completion
        that arrives before the body returns is applied at once. No completion
        by the deadline fails the task with a ``Timeout`` error (found by the
        sweeper).

        The delegation is committed before the ticket is returned (with
        anything the body left pending in the session), and renews the
        attempt's lease. Only the token's hash is stored; the ticket a body
        returns is not stored as the task's result. Delegating again in the
        same attempt replaces the token.

        :param timeout: seconds (or a :class:`~datetime.timedelta`) to wait
            for the completion; ``WTFLOW_DELEGATE_TIMEOUT`` by default.
        :returns: a :class:`~invenio_wtflow.engine.delegation.Ticket`.
        :raises ValueError: when ``timeout`` is not a positive duration.
        :raises InvalidStateError: when the attempt was stopped or completed.
        """
        from .api import delegate_attempt

        return delegate_attempt(
            self._require_execution(), timeout, lease=getattr(self, "lease", None)
        )

    def results(self, name):
        """Return the stored result of another task of the same workflow.

        :param name: the task's registered name, or its last dotted part
            (``"extract_metadata"`` for ``my_site.tasks.extract_metadata``).
        :raises LookupError: when no task, or more than one, has that name.
        """
        execution = self._require_execution()
        rows = (
            db.session.query(TaskRun.name, TaskRun.position, TaskRun.result)
            .filter(TaskRun.workflow_id == execution.workflow_id)
            .order_by(TaskRun.position)
            .all()
        )
        found = [r for r in rows if name in (r.name, r.name.rsplit(".", 1)[-1])]
        if len(found) != 1:
            raise LookupError(
                f"{len(found)} tasks named {name!r} in workflow "
                f"{execution.workflow_id}; expected exactly one."
            )
        return found[0].result


def _record_failure(task_run_id, celery_id, retries, exc):
    """Roll back, then record that the attempt failed with ``exc`` (being handled)."""
    db.session.rollback()
    orchestrator.atomic(
        orchestrator.fail,
        task_run_id,
        celery_id,
        f"{type(exc).__name__}: {exc}",
        traceback.format_exc(),
        retries,
    )


class _LazyData(Mapping):
    """A run's data, loaded on first use.

    Most attempts take all their arguments from their signature: they need
    not load the workflow row (one ``SELECT`` and its data document) at all.

    :param load: a function returning the data.
    :param data: the data, when the claim read it already.
    """

    def __init__(self, load, data=None):
        """Load nothing yet."""
        self._load = load
        self._data = data

    @property
    def data(self):
        """The data, loaded now if not yet."""
        if self._data is None:
            self._data = self._load()
        return self._data

    def __getitem__(self, key):
        """Return the value of ``key``."""
        return self.data[key]

    def __iter__(self):
        """Iterate over the keys."""
        return iter(self.data)

    def __len__(self):
        """Return the number of keys."""
        return len(self.data)


def _execution(uow, task, celery_id, retries, func):
    """Compute a claimed attempt's arguments (what its claim did not read).

    :param task: the row :func:`~invenio_wtflow.engine.orchestrator.claim`
        returned.
    """
    signature = task.signature
    ref = signature.get("input")
    incoming = resolve(ref, orchestrator.inputs(task)) if ref is not None else None
    data = _LazyData(lambda: orchestrator.workflow_data(task.workflow_id), task.data)
    args, kwargs = call_arguments(func, signature, incoming, data)
    return Execution(
        task_run_id=str(task.id),
        celery_id=celery_id,
        workflow_id=str(task.workflow_id),
        root_id=str(task.root_id),
        position=task.position,
        retries=retries,
        args=tuple(args),
        kwargs=kwargs,
        dependants=task.dependants,
        workflow_name=getattr(task, "run_name", None),
    )


def workflow_task(*args, **options):
    """Declare a Celery task that workflows can run.

    Use it bare (``@workflow_task``) or with any Celery task option
    (``@workflow_task(bind=True, max_retries=3, queue="video")``). The task is
    a shared task, so it binds to the Invenio Celery application. Outside a
    workflow it is a plain Celery task.

    :param options: Celery task options.
    """
    options.setdefault("base", WorkflowTask)
    if not issubclass(options["base"], WorkflowTask):
        raise TypeError("The base of a workflow task must subclass WorkflowTask.")

    def decorate(func):
        proxy = shared_task(**options)(func)
        return _WorkflowTaskProxy(proxy._get_current_object)

    if len(args) == 1 and callable(args[0]):
        return decorate(args[0])
    if args:
        raise TypeError("workflow_task takes only keyword options.")
    return decorate


class _WorkflowTaskProxy(Proxy):
    """Lazy proxy to a shared workflow task that also supports ``canvas | task``.

    Python looks up reflected operators on the type, which Celery's proxy lacks.
    """

    __slots__ = ()

    def __ror__(self, other):
        return self._get_current_object().__ror__(other)


@workflow_task(bind=True, name=SUBWORKFLOW_TASK)
def run_subworkflow(self, name, data=None, key=None):
    """Run a registered definition as a node: spawn it and join its result.

    The child's data is the run's data with ``data`` merged over it. Use
    :meth:`~invenio_wtflow.api.Workflow.subworkflow` to put it in a canvas.
    """
    child = self.spawn(name, data={**self.workflow.data, **(data or {})}, key=key)
    return self.join(child)


@shared_task(name=ORCHESTRATE_TASK, ignore_result=True, acks_late=True)
def orchestrate(root_id):
    """Run one orchestrator pass of a tree (the engine publishes it).

    Coalesced: one message stands for every request made until the pass runs,
    and a pass waits for its tree to go quiet (``WTFLOW_ORCHESTRATION_DELAY``).
    """
    countdown = dynamic.postpone(root_id)
    if countdown:
        publish([Message.for_orchestration(root_id, countdown)])
        return 0
    try:
        return orchestrator.atomic(dynamic.orchestrate, root_id)
    except WorkflowNotFoundError:
        logger.warning("Workflow %s is gone; nothing to orchestrate.", root_id)
        return 0


@shared_task(ignore_result=True)
def requeue_stale():
    """Publish again the attempts left queued too long (run it from beat)."""
    count = _requeue_stale()
    if count:
        logger.warning("Re-published %d stale attempt(s).", count)
    return count


__all__ = (
    "Execution",
    "WorkflowTask",
    "workflow_task",
    "run_subworkflow",
    "orchestrate",
    "requeue_stale",
)
