# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Delegated tasks: hand the work to an external system, complete it by token.

A running task calls ``self.delegate()``: a random token is made, its SHA-256
is stored in a :class:`~invenio_wtflow.models.TaskDelegation` row keyed by the
task and its attempt (with the deadline), and the token is given once to the
body, which passes it on. When the body returns the ticket, the task goes
``waiting`` and its worker is free. The external system completes the task by
presenting the token (``POST .../complete``, or
:meth:`~invenio_wtflow.api.Task.complete`).

A completion is checked in this order, in one transaction:

1. Authentication, before any lock: the token's hash must equal (constant-time
   comparison) the hash stored for one of the task's attempts. Otherwise, and
   whether or not the task exists, :class:`~invenio_wtflow.errors.InvalidTokenError`
   (403); the reason is only logged. A wrong token waits for no lock.
2. Under the root lock (root, then the task, then its delegation row): a token
   of an earlier attempt, a task that was stopped, failed or timed out, or a
   completion with another body than the one applied:
   :class:`~invenio_wtflow.errors.CompletionConflictError` (409). The same
   body again is a replay: nothing changes, and the caller gets the task as
   it is.
3. A deadline that has passed, while the task still waits for the sweeper to
   fail it: :class:`~invenio_wtflow.errors.InvalidTokenError` (the token has
   expired).
4. Otherwise the completion is applied: the task succeeds (queueing what
   becomes ready) or fails (cancelling what depends on it), and a hash of the
   completion is stored to recognise replays.

**Early completion.** The external system may answer before the body has
returned, while the task is still ``running``. The completion is then applied
at once, exactly as from ``waiting`` (as Temporal accepts an activity's
asynchronous completion before the activity returns): the transition from
``running`` is conditional like every other, and the worker's own transition
to ``waiting``, when the body returns, finds the task finished and changes
nothing. Both take the root lock, so one of them wins, once.

A task still ``waiting`` after its deadline is failed by the sweeper
(:func:`expire`, reason ``Timeout``). A restart queues a new attempt; the
rows of earlier attempts stay, so their tokens get a 409, not a 403.
"""

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from invenio_db import db
from sqlalchemy import and_, select

from ..errors import CompletionConflictError, InvalidTokenError
from ..models import TaskDelegation, TaskRun, TaskStatus, utcnow
from . import orchestrator

logger = logging.getLogger(__name__)

RUNNING, WAITING = TaskStatus.RUNNING.value, TaskStatus.WAITING.value
SUCCESS, FAILURE = TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value

OUTCOMES = (SUCCESS, FAILURE)
"""What an external system may report."""

FAILURE_ERROR = "DelegatedTaskError"
"""Error type recorded when the external system reports a failure."""

TIMEOUT_ERROR = "Timeout"
"""Error type recorded when no completion arrived before the deadline."""

_DECOY = hashlib.sha256(b"invenio-wtflow: no delegation").hexdigest()
"""Compared with when a task has no delegation, so that its absence takes as long."""


@dataclass(frozen=True)
class Ticket:
    """What ``self.delegate()`` gives the body: pass it on, then return it.

    The token is shown here only: the database keeps its hash, and a ticket
    returned by the body is neither stored as the task's result nor given to
    Celery's result backend. It is left out of the ticket's ``repr``, so that
    logging a ticket does not log the token.
    """

    url: str
    """Where the external system posts its completion."""

    token: str = field(repr=False)
    """The bearer token of the completion, good for this attempt only."""

    deadline: datetime
    """When the token expires (timezone-aware, UTC)."""

    task_id: str
    """The delegated task run's id."""

    attempt: int
    """The attempt of the task the token is bound to."""


def new_token():
    """Return a new completion token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token):
    """Return the SHA-256 (hex) of a token, as stored.

    :param token: the token as presented.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digest(status, result, message):
    """Return the SHA-256 (hex) of a completion, to recognise its replays.

    :param status: ``"success"`` or ``"failure"``.
    :param result: the JSON result.
    :param message: the message, or ``None``.
    """
    canonical = json.dumps(
        [status, result, message], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _lock(task_id, attempt):
    """Lock and return the delegation row of a task's attempt, or ``None``."""
    return (
        db.session.query(TaskDelegation)
        .filter_by(task_id=task_id, attempt=attempt)
        .with_for_update()
        .populate_existing()
        .one_or_none()
    )


def delegate(uow, task_id, celery_id, retries, token_hash, deadline, lease=None):
    """Record a running attempt's delegation and return the attempt number.

    Delegating again in the same attempt (a Celery retry of the body, say)
    replaces the token and the deadline: the earlier token no longer works.
    Delegating renews the attempt's lease, which covers the rest of the body.

    :param task_id: the task run's id.
    :param celery_id: its current attempt's Celery id.
    :param retries: the Celery retry count of the execution delegating.
    :param token_hash: the hash of the new token (see :func:`hash_token`).
    :param deadline: when the token expires.
    :param lease: the task's lease in seconds (default ``WTFLOW_TASK_LEASE``).
    :raises InvalidStateError: when the attempt is no longer the running one.
    """
    _, task = orchestrator.lock_acting(task_id, celery_id, retries, lease, "delegate")
    record = _lock(task.id, task.attempt)
    if record is None:
        record = TaskDelegation(task_id=task.id, attempt=task.attempt)
        db.session.add(record)
    record.token_hash = token_hash
    record.deadline = deadline
    return task.attempt


def wait(uow, task_id, celery_id, retries, ticket):
    """Put a running task that returned its ticket in ``waiting``.

    A task that is no longer running (completed early, stopped, restarted)
    is left as it is. A ticket that is not the attempt's current one (the body
    delegated twice and returned the first ticket) fails the task: its token
    could never complete it.

    :param ticket: the :class:`Ticket` the body returned.
    :returns: whether the report was applied (``False`` for a stale one).
    """
    locked = orchestrator._lock_running(task_id, celery_id, retries)
    if locked is None:
        return False
    workflow, task = locked
    record = _lock(task.id, task.attempt)
    if (
        record is None
        or ticket.attempt != task.attempt
        or not hmac.compare_digest(record.token_hash, hash_token(ticket.token))
    ):
        orchestrator.fail_task(
            uow,
            workflow,
            task,
            "InvalidTicket: the body returned a ticket that is not its attempt's "
            "current one; return the ticket of the last self.delegate() call.",
        )
        return True
    task.status = WAITING
    task.lease_expires_at = None
    task.message = (
        f"Waiting for an external system until {record.deadline.isoformat()}."
    )
    orchestrator.refresh_status(uow, workflow)
    return True


def complete(
    uow,
    task_id,
    token_hash,
    status,
    result,
    message=None,
    workflow_id=None,
    origin=None,
):
    """Apply an external system's completion of a delegated task, once.

    See the module documentation for the order of the checks.

    :param task_id: the task run's id, as given (a malformed one is refused
        like a wrong token).
    :param token_hash: the hash of the presented token (see :func:`hash_token`).
    :param status: ``"success"`` or ``"failure"``.
    :param result: the JSON result (kept on failure too, for the record).
    :param message: the task's message; for a failure, its error's text.
    :param workflow_id: the run the caller named; the task must belong to it.
    :param origin: who sent the completion, for the log (a client address).
    :returns: ``"applied"``, or ``"replayed"`` when the same completion was
        applied already.
    :raises InvalidTokenError: for a wrong, expired or another task's token,
        or no such task.
    :raises CompletionConflictError: when the task cannot take it (see above).
    """
    task_id, attempt = _authenticate(task_id, token_hash, workflow_id, origin)
    workflow = orchestrator.lock_workflow(task_id=task_id)
    task = orchestrator._lock_tasks(TaskRun.id == task_id)[0]
    record = _lock(task_id, attempt)
    if not hmac.compare_digest(record.token_hash, token_hash):
        _reject(task_id, "token replaced by a later delegation", origin)
    if attempt != task.attempt:
        raise CompletionConflictError(
            f"Task {task.id} was restarted: the token belongs to attempt {attempt} "
            f"and the task is at attempt {task.attempt}."
        )
    applied = digest(status, result, message)
    if record.completion_digest is not None:
        if hmac.compare_digest(record.completion_digest, applied):
            logger.info("Replayed completion of task %s ignored.", task.id)
            return "replayed"
        raise CompletionConflictError(
            f"Task {task.id} was completed already ({task.status}) with another body."
        )
    if task.status not in (RUNNING, WAITING) or task.joined is not None:
        raise CompletionConflictError(_why_not(task))
    now = utcnow()
    if record.deadline <= now:
        _reject(task_id, f"token expired at {record.deadline.isoformat()}", origin)
    record.completion_digest = applied
    record.completed_at = now
    _apply(uow, workflow, task, status, result, message)
    logger.info("Task %s completed (%s) by its external system.", task.id, status)
    return "applied"


def _authenticate(task_id, token_hash, workflow_id, origin):
    """Find the attempt a token belongs to; refuse alike whatever is wrong.

    Every stored hash of the task is compared, in constant time; a task with
    none, no task at all or a malformed id is compared with a decoy.

    :returns: ``(task id as a UUID, attempt)``.
    """
    task_uuid = _uuid(task_id)
    workflow_uuid = None if workflow_id is None else _uuid(workflow_id)
    rows = []
    if task_uuid is not None and (workflow_id is None or workflow_uuid is not None):
        query = select(TaskDelegation.attempt, TaskDelegation.token_hash).where(
            TaskDelegation.task_id == task_uuid
        )
        if workflow_uuid is not None:
            query = query.join(TaskRun, TaskRun.id == TaskDelegation.task_id).where(
                TaskRun.workflow_id == workflow_uuid
            )
        rows = db.session.execute(query).all()
    found = None
    for attempt, stored in rows or [(None, _DECOY)]:
        if hmac.compare_digest(stored, token_hash) and attempt is not None:
            found = attempt
    if found is None:
        _reject(task_id, "no delegation of this task has the token", origin)
    return task_uuid, found


def _uuid(value):
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def _reject(task_id, reason, origin):
    """Log why a completion was refused, and refuse it without saying why."""
    logger.warning(
        "Rejected a completion of task %r%s: %s.",
        str(task_id),
        f" from {origin}" if origin else "",
        reason,
    )
    raise InvalidTokenError()


def _why_not(task):
    """Explain to a genuine token's holder why the task takes no completion."""
    if task.status == TaskStatus.CANCELLED.value:
        return f"Task {task.id} was cancelled: {task.message or 'stopped'}"
    if task.status == FAILURE and (task.error or "").startswith(f"{TIMEOUT_ERROR}:"):
        return f"Task {task.id} timed out: {task.error}"
    if task.status == WAITING:
        return f"Task {task.id} is waiting for child workflows, not a completion."
    return f"Task {task.id} is {task.status}; it takes no completion now."


def _apply(uow, workflow, task, status, result, message):
    """Succeed or fail a locked, running or waiting task with the completion."""
    if status == SUCCESS:
        task.message = message or "Completed by the external system."
        orchestrator.complete(uow, workflow, task, result)
        return
    task.message = message or "The external system reported a failure."
    task.result = result
    orchestrator.fail_task(uow, workflow, task, f"{FAILURE_ERROR}: {task.message}")


def expire(uow, task_id):
    """Fail a waiting task whose delegation's deadline has passed.

    :returns: ``"failed"``, or ``None`` when there is nothing to do (it was
        completed, stopped or restarted meanwhile).
    """
    workflow = orchestrator.lock_workflow(task_id=task_id)
    task = orchestrator._lock_tasks(TaskRun.id == task_id)[0]
    if task.status != WAITING or task.joined is not None:
        return None
    record = _lock(task.id, task.attempt)
    if record is None or record.completed_at is not None or record.deadline > utcnow():
        return None
    task.message = "Timed out waiting for the external system."
    orchestrator.fail_task(
        uow,
        workflow,
        task,
        f"{TIMEOUT_ERROR}: no completion arrived before the deadline "
        f"({record.deadline.isoformat()}).",
    )
    return "failed"


def overdue(now):
    """Return the ids of waiting tasks whose delegation's deadline is before ``now``.

    :param now: the time to compare the deadlines with.
    """
    return list(
        db.session.execute(
            select(TaskRun.id)
            .join(
                TaskDelegation,
                and_(
                    TaskDelegation.task_id == TaskRun.id,
                    TaskDelegation.attempt == TaskRun.attempt,
                ),
            )
            .where(
                TaskRun.status == WAITING,
                TaskDelegation.deadline < now,
                TaskDelegation.completed_at.is_(None),
            )
            .order_by(TaskRun.id)
        ).scalars()
    )


def deadline_of(task):
    """Return the deadline of the delegation of a task's current attempt, or ``None``.

    :param task: a :class:`~invenio_wtflow.models.TaskRun`.
    """
    return db.session.execute(
        select(TaskDelegation.deadline).where(
            TaskDelegation.task_id == task.id, TaskDelegation.attempt == task.attempt
        )
    ).scalar_one_or_none()
