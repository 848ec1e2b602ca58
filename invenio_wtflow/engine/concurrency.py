# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Concurrency limits: at most ``max_runs`` runs of a definition at once.

A definition may declare ``max_runs`` and, optionally, a ``concurrency_key``
computed from a run's data (one limit per video, say). A run asked to start
when its key has no free slot stays ``pending`` with ``slot_requested_at``
set; when a run of the key finishes (success, failure or stop), the
transaction that finishes it registers an admission that runs after its
commit and starts the oldest waiting runs, in creation order. The sweeper
admits too, so a crash between that commit and the admission delays a
waiting run but never strands it.

Decisions for one key are serialised by a transaction-level advisory lock on
PostgreSQL (SQLite serialises writers anyway). The lock is always taken
before any root lock: admission and start lock the key first, then the run.
"""

import hashlib
import logging

from flask import current_app
from invenio_db import db
from invenio_db.uow import Operation
from sqlalchemy import func, select

from ..models import WorkflowRun, WorkflowStatus, utcnow

logger = logging.getLogger(__name__)

ADMITTED = [WorkflowStatus.RUNNING.value, WorkflowStatus.WAITING.value]
"""Statuses of a run that holds a slot."""


def limit_of(name):
    """Return ``(max_runs, key_function)`` of a definition, or ``None``."""
    ext = current_app.extensions.get("invenio-wtflow")
    return ext.limits(name) if ext else None


def key_of(name, data):
    """Return the concurrency key of a run of ``name`` with ``data``, or ``None``."""
    limit = limit_of(name)
    if limit is None:
        return None
    _, key_function = limit
    return "" if key_function is None else str(key_function(data))[:255]


def lock(name, key):
    """Serialise admission decisions for one key until the transaction ends."""
    if db.session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"wtflow\0{name}\0{key}".encode()).digest()
    db.session.execute(
        select(
            func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))
        )
    )


def lock_for(workflow_id, data=None):
    """Take the key lock of a run before its root lock, when it is limited.

    :param data: data about to be merged over the run's data.
    :returns: ``(max_runs, key)`` or ``None`` when the definition has no limit.
    """
    row = db.session.execute(
        select(WorkflowRun.name, WorkflowRun.data).where(WorkflowRun.id == workflow_id)
    ).one_or_none()
    if row is None or limit_of(row.name) is None:
        return None
    key = key_of(row.name, {**row.data, **(data or {})})
    lock(row.name, key)
    return limit_of(row.name)[0], key


def has_slot(workflow, max_runs):
    """Whether a run of ``workflow``'s key may start now (the key is locked).

    Not when the slots are taken, nor when an older run of the key waits for
    one: runs are admitted in creation order.
    """
    same_key = (
        WorkflowRun.name == workflow.name,
        WorkflowRun.concurrency_key == workflow.concurrency_key,
        WorkflowRun.id != workflow.id,
    )
    running = db.session.execute(
        select(func.count()).where(*same_key, WorkflowRun.status.in_(ADMITTED))
    ).scalar_one()
    if running >= max_runs:
        return False
    older_waiting = db.session.execute(
        select(WorkflowRun.id)
        .where(
            *same_key,
            WorkflowRun.status == WorkflowStatus.PENDING.value,
            WorkflowRun.slot_requested_at.is_not(None),
            WorkflowRun.created < workflow.created,
        )
        .limit(1)
    ).first()
    return older_waiting is None


def wait_for_slot(uow, workflow, max_runs, admit_after=False):
    """Leave a run ``pending`` until a slot of its key frees.

    :param admit_after: look for a free slot after the commit (when the key
        could not be locked first, as when a child is spawned).
    """
    workflow.slot_requested_at = workflow.slot_requested_at or utcnow()
    workflow.message = (
        f"Waiting for a free slot: {max_runs} run(s) of {workflow.name} at most "
        "at once."
    )
    if admit_after:
        admission(uow).keys.add((workflow.name, workflow.concurrency_key))


class AdmitOp(Operation):
    """Unit-of-work operation that admits waiting runs after the commit."""

    def __init__(self):
        """Start with no key to look at."""
        self.keys = set()

    def on_post_commit(self, uow):
        """Admit the oldest waiting runs of each key that may have a free slot.

        The caller's transaction has committed: an error here is logged, not
        raised (the sweeper admits what is left).
        """
        from .orchestrator import atomic

        for name, key in sorted(self.keys):
            try:
                atomic(admit, name, key)
            except Exception:
                logger.exception("Could not admit runs of %s (key %r).", name, key)
                db.session.rollback()


def admission(uow):
    """Return the :class:`AdmitOp` of a unit of work, registering one once."""
    op = getattr(uow, "_wtflow_admission", None)
    if op is None:
        op = uow._wtflow_admission = AdmitOp()
        uow.register(op)
    return op


def admit(uow, name, key):
    """Start the oldest runs of a key waiting for a slot, as slots allow.

    :returns: the number of runs started.
    """
    from .orchestrator import lock_workflow, start_locked

    limit = limit_of(name)
    if limit is None:
        return 0
    lock(name, key)
    running = db.session.execute(
        select(func.count()).where(
            WorkflowRun.name == name,
            WorkflowRun.concurrency_key == key,
            WorkflowRun.status.in_(ADMITTED),
        )
    ).scalar_one()
    free = limit[0] - running
    if free <= 0:
        return 0
    waiting = db.session.execute(
        select(WorkflowRun.id)
        .where(
            WorkflowRun.name == name,
            WorkflowRun.concurrency_key == key,
            WorkflowRun.status == WorkflowStatus.PENDING.value,
            WorkflowRun.slot_requested_at.is_not(None),
        )
        .order_by(WorkflowRun.created, WorkflowRun.id)
        .limit(free)
    ).scalars()
    started = 0
    for workflow_id in list(waiting):
        workflow = lock_workflow(workflow_id)
        if (
            workflow.status == WorkflowStatus.PENDING.value
            and workflow.slot_requested_at
        ):
            start_locked(uow, workflow)
            started += 1
    return started


def admit_waiting():
    """Admit waiting runs of every key (the sweeper's backstop).

    :returns: the number of runs started.
    """
    from .orchestrator import atomic

    keys = db.session.execute(
        select(WorkflowRun.name, WorkflowRun.concurrency_key)
        .where(
            WorkflowRun.status == WorkflowStatus.PENDING.value,
            WorkflowRun.slot_requested_at.is_not(None),
        )
        .distinct()
    ).all()
    db.session.commit()
    return sum(atomic(admit, name, key) for name, key in keys)
