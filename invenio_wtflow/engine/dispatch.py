# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Publishing attempts after commit, revoking them, and the sweeper.

The orchestrator marks a task ``queued`` (with the Celery id of its attempt)
in the transaction that decides it is ready and registers a
:class:`DispatchOp` on the unit of work; the message is published only after
the commit. If the process dies in between, :func:`requeue_stale` publishes the
message again once it has waited longer than ``WTFLOW_REQUEUE_AFTER``.
"""

import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import timedelta

from celery import current_app as current_celery_app
from celery.utils.saferepr import saferepr
from flask import current_app
from invenio_db import db
from invenio_db.uow import Operation
from sqlalchemy import select, update

from ..models import TaskRun, TaskStatus, WorkflowRun, utcnow
from . import prepared, uptime
from .graph import ROUTING_OPTIONS

logger = logging.getLogger(__name__)

HEADER = "wtflow_task"
"""Message header carrying the id of the task run an attempt belongs to."""

INPUT_HEADER = "wtflow_input"
"""Message header saying whether the attempt takes upstream results.

``False`` lets the claim skip reading them; absent (a message published
before the header existed), the claim reads them if the task takes any.
"""

UNFLUSHED_HEADER = "wtflow_unflushed"
"""Message header saying that the commit that queued the attempt may not be flushed.

Present (``True``) on the attempts of a run created at once (see
:func:`~invenio_wtflow.engine.fused.create`), published before the
creation's flush: a claim that commits unflushed checks the flush first
(see ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``).
"""


@dataclass(frozen=True)
class Message:
    """What is needed to publish one attempt of a task run."""

    task_run_id: str
    celery_id: str
    name: str
    options: dict
    retries: int = 0
    args: tuple = ()
    takes_input: bool = True
    unflushed: bool = False

    @property
    def headers(self):
        """The message's headers: its task run, its input, whether unflushed."""
        if self.task_run_id is None:
            return {}
        headers = {HEADER: self.task_run_id, INPUT_HEADER: self.takes_input}
        if self.unflushed:
            headers[UNFLUSHED_HEADER] = True
        return headers

    @classmethod
    def for_task(cls, task):
        """Build the message of the current attempt of a task run."""
        return cls.for_attempt(
            task.id, task.celery_id, task.name, task.signature, task.retries or 0
        )

    @classmethod
    def for_attempt(cls, task_run_id, celery_id, name, signature, retries=0):
        """Build the message of an attempt from its task run's columns.

        :param signature: the task run's stored signature (its options route
            the message).
        """
        return cls(
            task_run_id=str(task_run_id),
            celery_id=celery_id,
            name=name,
            options=dict(signature.get("options") or {}),
            retries=retries,
            takes_input=signature.get("input") is not None,
        )

    @classmethod
    def for_orchestration(cls, root_id, countdown=None):
        """Build the message of an orchestrator pass of a root run.

        :param countdown: seconds the pass waits before it runs.
        """
        from .dynamic import ORCHESTRATE_TASK

        return cls(
            task_run_id=None,
            celery_id=str(uuid.uuid4()),
            name=ORCHESTRATE_TASK,
            options={"countdown": countdown} if countdown else {},
            args=(str(root_id),),
        )


class _Outbox(threading.local):
    """Messages waiting to be sent by this thread, sent in order."""

    def __init__(self):
        self.pending = deque()
        self.draining = False


_outbox = _Outbox()


def publish(messages):
    """Send messages to the broker, in order, without recursing.

    In eager mode an attempt runs inside the send and publishes its own
    successors; they are appended here and sent by the outermost call, so a
    long chain does not grow the stack. A send that fails is logged and left
    to the sweeper: the task is ``queued`` in the database already. After a
    failed send the rest of the batch is left to the sweeper too, so that a
    broker outage costs the caller one timeout, not one per message.

    :param messages: an iterable of :class:`Message`.
    """
    _outbox.pending.extend(messages)
    if _outbox.draining:
        return
    _outbox.draining = True
    try:
        while _outbox.pending:
            message = _outbox.pending.popleft()
            try:
                sent = _send(message)
            except Exception:
                logger.exception(
                    "Attempt %s of task run %s failed to run eagerly.",
                    message.celery_id,
                    message.task_run_id,
                )
                continue
            if not sent and _outbox.pending:
                # The broker is down: each send would block for the client's
                # retries. The rest are queued in the database already.
                logger.error(
                    "Broker unavailable: leaving %d more attempt(s) to the sweeper.",
                    len(_outbox.pending),
                )
                break
    finally:
        _outbox.pending.clear()
        _outbox.draining = False


def _routing(name, options):
    """The task's own routing options, overridden by the signature's."""
    task = current_celery_app.tasks.get(name)
    own = task._get_exec_options() if task is not None else {}
    kept = {k: v for k, v in own.items() if k in ROUTING_OPTIONS and v is not None}
    return {**kept, **options}


class _Unread:
    """What ``send_task`` hands back for an attempt: its id, and nothing to read.

    Celery's ``AsyncResult`` tells the result backend, when it is garbage
    collected, that nobody waits for it any more: with the Redis backend,
    once the process has waited for any result, that is an ``UNSUBSCRIBE``
    round trip for every message sent, on the publisher's path. It is kept
    out of the publishing task's trail (``add_to_parent=False``): it has no
    ``as_tuple``, which storing that task's result would call.
    """

    __slots__ = ("id", "ignored")

    def __init__(self, id):
        """Keep the attempt's Celery id."""
        self.id = id


def _send(message):
    """Publish one attempt (or run it at once in eager mode).

    The attempt does not write Celery's result backend (``ignore_result``,
    honoured per message by the worker): the database holds the result and
    nothing reads it back, so the write would be one more round trip per
    task for nothing. For the same reason the publish hands back no
    ``AsyncResult`` (see :class:`_Unread`), and adds none to the trail of
    the task that publishes it. The arguments' representations, which
    Celery builds with its ``saferepr`` for every message, are given where
    they are known: an attempt has no arguments and no keyword arguments.

    :returns: ``False`` when the broker refused the message.
    """
    celery = current_celery_app
    headers = message.headers
    if celery.conf.task_always_eager:
        celery.tasks[message.name].apply(
            args=message.args,
            kwargs={},
            task_id=message.celery_id,
            headers=headers,
            retries=message.retries,
            throw=False,
        )
        return True
    try:
        celery.send_task(
            message.name,
            args=message.args,
            kwargs={},
            task_id=message.celery_id,
            headers=headers,
            retries=message.retries,
            ignore_result=True,
            result_cls=_Unread,
            add_to_parent=False,
            argsrepr=_argsrepr(celery, message.args),
            kwargsrepr="{}",
            **_routing(message.name, message.options),
        )
    except Exception:
        logger.exception(
            "Could not publish attempt %s of task run %s; the sweeper will retry.",
            message.celery_id,
            message.task_run_id,
        )
        return False
    return True


def _argsrepr(celery, args):
    """``argsrepr`` of a message, as Celery writes it; without work for no arguments."""
    return saferepr(args, celery.amqp.argsrepr_maxsize) if args else "()"


def revoke(celery_ids):
    """Ask the workers to drop or terminate the given attempts.

    Revocation is best effort: the database already says the attempts are
    cancelled, and a result they report late is ignored.

    :param celery_ids: Celery task ids of the attempts.
    """
    celery = current_celery_app
    if not celery_ids or celery.conf.task_always_eager:
        return
    try:
        celery.control.revoke(
            list(celery_ids),
            terminate=current_app.config["WTFLOW_REVOKE_TERMINATE"],
        )
    except Exception:
        logger.exception("Could not revoke attempts %s.", celery_ids)


class DispatchOp(Operation):
    """Unit-of-work operation that publishes and revokes after the commit."""

    def __init__(self):
        """Start with nothing to send."""
        self.messages = []
        self.revoked = []

    def on_post_commit(self, uow):
        """Revoke the stopped attempts, publish the new ones, then await the flush.

        A run created at once commits without waiting for its WAL flush
        (see :func:`~invenio_wtflow.engine.fused.create`): its first
        attempts are published as soon as it is committed, saying so
        (:data:`UNFLUSHED_HEADER`), and the unit of work ends once it is
        flushed.
        """
        revoke(self.revoked)
        messages = self.messages
        if prepared.awaits_flush(uow.session):
            messages = [replace(message, unflushed=True) for message in messages]
        try:
            publish(messages)
        finally:
            prepared.await_flush(uow.session)


def dispatcher(uow):
    """Return the :class:`DispatchOp` of a unit of work, registering one once.

    :param uow: an :class:`invenio_db.uow.UnitOfWork`.
    """
    op = getattr(uow, "_wtflow_dispatch", None)
    if op is None:
        op = uow._wtflow_dispatch = DispatchOp()
        uow.register(op)
    return op


def requeue_stale(older_than=None):
    """Publish again the attempts left ``queued`` with no claim for too long.

    Each one's ``queued_at`` is moved to now, so a task that simply waits in a
    long queue is re-sent at most once per period. Duplicates are harmless:
    only one delivery of an attempt can claim it. Running attempts whose lease
    has expired are run again or failed (see
    :func:`~invenio_wtflow.engine.orchestrator.recover_expired`), and delegated
    tasks still waiting after their deadline are failed (see
    :func:`~invenio_wtflow.engine.delegation.expire`). After a crash of the
    database, where claims commit unflushed, the attempts queued before it
    are held back for a lease (see :mod:`~invenio_wtflow.engine.uptime`).

    :param older_than: seconds; defaults to ``WTFLOW_REQUEUE_AFTER``.
    :returns: the number of attempts published again, recovered or timed out,
        and of runs started because a slot had freed.
    """
    if older_than is None:
        older_than = current_app.config["WTFLOW_REQUEUE_AFTER"]
    now = utcnow()
    deadline = now - timedelta(seconds=older_than)
    stale = (
        db.session.query(TaskRun)
        .filter(
            TaskRun.status == TaskStatus.QUEUED.value,
            TaskRun.queued_at <= deadline,
            TaskRun.kind.is_(None),  # the orchestrator's nodes have no message
        )
        .order_by(TaskRun.id)
        .all()
    )
    crash = uptime.crash_noticed(db.session, now)
    messages = []
    for task in stale:
        if uptime.held_back(task, crash, now):  # its claim lost, its body running?
            continue
        touched = (
            db.session.query(TaskRun)
            .filter(
                TaskRun.id == task.id,
                TaskRun.status == TaskStatus.QUEUED.value,
                TaskRun.celery_id == task.celery_id,
            )
            .update({TaskRun.queued_at: now}, synchronize_session=False)
        )
        if touched:
            messages.append(Message.for_task(task))
    # Commit before any root row is touched: the lock order is root first
    # (a stop holding a root may be waiting for these task rows).
    db.session.commit()
    messages += _stale_orchestrations(now, deadline)
    db.session.commit()
    recovered = _recover_expired_leases(now)
    recovered += _expire_delegations(now)
    recovered += _admit_waiting()
    for message in messages:
        logger.warning(
            "Re-publishing %s (%s), queued since before %s.",
            (
                f"attempt {message.celery_id} of task run {message.task_run_id}"
                if message.task_run_id
                else f"orchestrator pass of workflow {message.args[0]}"
            ),
            message.name,
            deadline.isoformat(),
        )
    publish(messages)
    return len(messages) + recovered


def _stale_orchestrations(now, deadline):
    """Messages of the orchestrator passes asked for before ``deadline``."""
    messages = []
    stale = db.session.execute(
        select(WorkflowRun.id)
        .where(WorkflowRun.orchestration_queued_at <= deadline)
        .order_by(WorkflowRun.id)
    ).scalars()
    for root_id in list(stale):
        touched = db.session.execute(
            update(WorkflowRun)
            .where(
                WorkflowRun.id == root_id,
                WorkflowRun.orchestration_queued_at <= deadline,
            )
            .values(orchestration_queued_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if touched:
            messages.append(Message.for_orchestration(root_id))
    return messages


def _admit_waiting():
    """Start runs waiting for a slot that has freed (see ``max_runs``)."""
    # Imported here: the orchestrator publishes through this module.
    from .concurrency import admit_waiting

    admitted = admit_waiting()
    if admitted:
        logger.warning("Admitted %d run(s) waiting for a free slot.", admitted)
    return admitted


def _expire_delegations(now):
    """Fail the delegated tasks still waiting after their deadline."""
    # Imported here: the orchestrator publishes through this module.
    from .delegation import expire, overdue
    from .orchestrator import atomic

    overdue_ids = overdue(now)
    db.session.commit()
    expired = 0
    for task_id in overdue_ids:
        if atomic(expire, task_id):
            logger.warning("Delegated task run %s timed out.", task_id)
            expired += 1
    return expired


def _recover_expired_leases(now):
    """Run again (or fail) running attempts whose lease ended before ``now``."""
    # Imported here: the orchestrator publishes through this module.
    from .orchestrator import atomic, recover_expired

    expired = [
        task_id
        for (task_id,) in db.session.query(TaskRun.id)
        .filter(
            TaskRun.status == TaskStatus.RUNNING.value,
            TaskRun.lease_expires_at < now,
        )
        .order_by(TaskRun.id)
    ]
    db.session.commit()
    recovered = 0
    for task_id in expired:
        outcome = atomic(recover_expired, task_id)
        if outcome:
            logger.warning("Lease of task run %s expired: %s.", task_id, outcome)
            recovered += 1
    return recovered
