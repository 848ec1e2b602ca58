# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Database models for workflow runs, their tasks and the edges between them."""

import enum
import uuid
from datetime import datetime, timezone

from invenio_db import db
from sqlalchemy import DDL, event
from sqlalchemy.dialects import postgresql
from sqlalchemy_utils.types import JSONType, UUIDType

JSON = (
    db.JSON()
    .with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    .with_variant(JSONType(), "sqlite")
    .with_variant(JSONType(), "mysql")
)
"""A JSON column type: JSONB on PostgreSQL, text-encoded JSON elsewhere."""


def utcnow():
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(tz=timezone.utc)


class TaskStatus(str, enum.Enum):
    """Status of one task run."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self):
        """Whether the status is final for the current attempt."""
        return self in TERMINAL_TASK_STATUSES

    def __str__(self):
        """Return the value, as stored in the database."""
        return self.value


TERMINAL_TASK_STATUSES = frozenset(
    {TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCELLED}
)
"""Statuses a task leaves only by being restarted."""

ACTIVE_TASK_STATUSES = frozenset(
    {TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING}
)
"""Statuses of a task whose attempt has been handed to Celery."""


class NodeKind(str, enum.Enum):
    """What runs a node that is not a Celery task: the root's orchestrator."""

    POPULATE = "populate"
    CALLBACK = "callback"

    def __str__(self):
        """Return the value, as stored in the database."""
        return self.value


class WorkflowStatus(str, enum.Enum):
    """Status of one workflow run, derived from its tasks."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self):
        """Whether the run has finished (until it is restarted)."""
        return self in (
            WorkflowStatus.SUCCESS,
            WorkflowStatus.FAILURE,
            WorkflowStatus.CANCELLED,
        )

    def __str__(self):
        """Return the value, as stored in the database."""
        return self.value


class WorkflowRun(db.Model, db.Timestamp):
    """One execution of a workflow definition."""

    __tablename__ = "wtflow_workflow"
    # Indexes are declared here, not on their columns, so that Continuum
    # does not copy them onto the version table, which only history reads
    # (by run, in transaction order: its primary key). Looking runs up by
    # name uses the unique constraint and the concurrency index.
    __table_args__ = (
        db.UniqueConstraint("name", "key"),
        db.UniqueConstraint("parent_task_id", "spawn_key"),
        db.Index("ix_wtflow_workflow_concurrency", "name", "concurrency_key", "status"),
        db.Index("ix_wtflow_workflow_status", "status"),
        db.Index("ix_wtflow_workflow_created_by", "created_by"),
    )
    __versioned__ = {
        # See TaskRun: versions without an ``end_transaction_id`` to maintain.
        "strategy": "subquery",
        # Set once, when a child is spawned: nothing to version.
        "exclude": [
            "parent_id",
            "parent_task_id",
            "spawn_key",
            "spawn_digest",
            "spawn_index",
            "concurrency_key",
            "slot_requested_at",
            # Bookkeeping of the root's orchestrator, changed on every request.
            "orchestration_requests",
            "orchestrations",
            "orchestration_queued_at",
            "orchestration_requested_at",
        ],
    }

    id = db.Column(UUIDType, primary_key=True, default=uuid.uuid4)
    """Run identifier; kept across restarts."""

    name = db.Column(db.String(255), nullable=False)
    """Name under which the definition is registered."""

    key = db.Column(db.String(255), nullable=True)
    """Caller-chosen idempotency key, unique per definition name."""

    data = db.Column(JSON, nullable=False, default=dict)
    """Workflow data: keyword arguments for bare tasks, merged on start."""

    status = db.Column(
        db.String(16), nullable=False, default=WorkflowStatus.PENDING.value
    )
    """Status derived from the tasks (see :mod:`invenio_wtflow.engine.status`)."""

    message = db.Column(db.Text, nullable=True)
    """Human-readable reason for the current status (e.g. which task failed)."""

    output = db.Column(JSON, nullable=True)
    """Which task results make up the run's result (see ``engine.graph``)."""

    root_id = db.Column(UUIDType, db.ForeignKey("wtflow_workflow.id"), nullable=True)
    """Top workflow of a tree of parent/child runs (itself for a root)."""

    parent_id = db.Column(
        UUIDType, db.ForeignKey("wtflow_workflow.id"), nullable=True, index=True
    )
    """Workflow whose task spawned this run (``None`` for a root)."""

    parent_task_id = db.Column(
        UUIDType, db.ForeignKey("wtflow_task.id", use_alter=True), nullable=True
    )
    """Task run that spawned this run (``None`` for a root)."""

    spawn_key = db.Column(db.String(255), nullable=True)
    """Identity of a child within its parent task: the caller's key or a hash."""

    spawn_digest = db.Column(db.String(64), nullable=True)
    """Hash of the definition name and data the child was spawned with."""

    spawn_index = db.Column(db.Integer, nullable=True)
    """Position of a child among the runs its parent task spawned, from 0."""

    concurrency_key = db.Column(db.String(255), nullable=True)
    """Key that runs of a limited definition share a limit under (``max_runs``)."""

    slot_requested_at = db.Column(db.UTCDateTime, nullable=True)
    """When the run asked to start and found no free slot; ``None`` otherwise."""

    orchestration_requests = db.Column(db.Integer, nullable=False, default=0)
    """On a root: how many times its tree asked for the orchestrator."""

    orchestrations = db.Column(db.Integer, nullable=False, default=0)
    """On a root: how many orchestrator passes ran (requests are coalesced)."""

    orchestration_queued_at = db.Column(db.UTCDateTime, nullable=True)
    """On a root: when a pass was asked for and not yet run; ``None`` otherwise."""

    orchestration_requested_at = db.Column(db.UTCDateTime, nullable=True)
    """On a root: when its tree last asked for the orchestrator."""

    created_by = db.Column(db.Integer, nullable=True)
    """Identifier of the user who created the run, if any."""

    started_at = db.Column(db.UTCDateTime, nullable=True)
    """When the run was (last) started."""

    finished_at = db.Column(db.UTCDateTime, nullable=True)
    """When the run reached a terminal status."""

    version_id = db.Column(db.Integer, nullable=False)
    """Optimistic concurrency counter, also used as an ETag."""

    __mapper_args__ = {"version_id_col": version_id}

    tasks = db.relationship(
        "TaskRun",
        back_populates="workflow",
        order_by="TaskRun.position",
        foreign_keys="TaskRun.workflow_id",
        lazy="select",
    )


class TaskRun(db.Model, db.Timestamp):
    """One node of a workflow run."""

    __tablename__ = "wtflow_task"
    # As on WorkflowRun: no index copied onto the version table. A run's
    # tasks are looked up through the unique (workflow_id, position).
    __table_args__ = (
        db.UniqueConstraint("workflow_id", "position"),
        # Named: the naming convention would reuse the name of the one above.
        db.UniqueConstraint("workflow_id", "node_key", name="uq_wtflow_task_node_key"),
        db.Index("ix_wtflow_task_status", "status"),
    )
    __versioned__ = {
        # Continuum's default ``validity`` strategy reads and updates the
        # previous version row of every changed object, one by one (20,000
        # statements to create 10,000 tasks); ``subquery`` only inserts. Nothing
        # here reads ``end_transaction_id``: history orders by transaction.
        "strategy": "subquery",
        "exclude": ["remaining", "lease_expires_at", "joined", "kind", "node_key"],
    }

    id = db.Column(UUIDType, primary_key=True, default=uuid.uuid4)
    """Task run identifier; kept across attempts."""

    workflow_id = db.Column(
        UUIDType, db.ForeignKey("wtflow_workflow.id"), nullable=False
    )
    """Workflow run this task belongs to."""

    position = db.Column(db.Integer, nullable=False)
    """Position of the node in graph order (depth first, left to right)."""

    name = db.Column(db.String(255), nullable=False)
    """Registered Celery task name (a method name for a callback)."""

    kind = db.Column(db.String(16), nullable=True)
    """``None`` for a Celery task, else a :class:`NodeKind`: a node the root's
    orchestrator runs itself (see :mod:`invenio_wtflow.engine.dynamic`)."""

    node_key = db.Column(db.String(64), nullable=True)
    """Identity of a node added at run time, unique within its run."""

    signature = db.Column(JSON, nullable=False, default=dict)
    """Partial arguments, options and input wiring compiled from the definition."""

    status = db.Column(db.String(16), nullable=False, default=TaskStatus.PENDING.value)
    """Current status of the task (see :class:`TaskStatus`)."""

    attempt = db.Column(db.Integer, nullable=False, default=0)
    """Number of attempts dispatched so far; each one has its own Celery id."""

    celery_id = db.Column(db.String(36), nullable=True, unique=True)
    """Celery task id of the current attempt."""

    retries = db.Column(db.Integer, nullable=False, default=0)
    """Celery retries within the current attempt."""

    remaining = db.Column(db.Integer, nullable=False, default=0)
    """Number of upstream tasks not yet successful (the join counter)."""

    message = db.Column(db.Text, nullable=True)
    """Last message reported by the task, or the reason for its status."""

    progress = db.Column(db.Float, nullable=True)
    """Last progress reported by the task, between 0 and 1."""

    result = db.Column(JSON, nullable=True)
    """JSON result of the last successful attempt.

    For a delegated task that the external system reported failed, the result
    it sent along (if any).
    """

    error = db.Column(db.Text, nullable=True)
    """Exception of the last failed attempt, as ``Type: message``."""

    traceback = db.Column(db.Text, nullable=True)
    """Traceback of the last failed attempt."""

    queued_at = db.Column(db.UTCDateTime, nullable=True)
    """When the current attempt was queued (or is due, for a Celery retry)."""

    started_at = db.Column(db.UTCDateTime, nullable=True)
    """When the current attempt started running."""

    finished_at = db.Column(db.UTCDateTime, nullable=True)
    """When the current attempt reached a terminal status."""

    lease_expires_at = db.Column(db.UTCDateTime, nullable=True)
    """When a running attempt that shows no sign of life is presumed dead."""

    joined = db.Column(JSON, nullable=True)
    """Child runs a ``waiting`` task joins: ``{"children": [ids], ...}``."""

    workflow = db.relationship(
        WorkflowRun, back_populates="tasks", foreign_keys=[workflow_id]
    )


class TaskDependency(db.Model):
    """An edge of the graph: ``task`` runs after ``depends_on`` succeeded."""

    __tablename__ = "wtflow_task_dependency"

    task_id = db.Column(
        UUIDType, db.ForeignKey("wtflow_task.id"), primary_key=True, nullable=False
    )
    """The downstream task."""

    depends_on_id = db.Column(
        UUIDType,
        db.ForeignKey("wtflow_task.id"),
        primary_key=True,
        nullable=False,
        index=True,
    )
    """The upstream task."""


class TaskDelegation(db.Model, db.Timestamp):
    """One attempt of a task that handed its work to an external system.

    The row binds a completion token to its task and attempt: it keeps the
    token's hash (never the token), the deadline, and, once the external
    system has completed the task, a hash of the completion it sent, so that
    a replay can be told from a conflicting second completion. Rows of earlier
    attempts stay, so that their tokens are recognised (and refused) after a
    restart. Bookkeeping, like the dependency edges: not versioned.
    """

    __tablename__ = "wtflow_task_delegation"

    task_id = db.Column(
        UUIDType, db.ForeignKey("wtflow_task.id"), primary_key=True, nullable=False
    )
    """The delegated task run."""

    attempt = db.Column(db.Integer, primary_key=True, nullable=False)
    """The attempt of the task that delegated; its token is good for no other."""

    token_hash = db.Column(db.String(64), nullable=False)
    """SHA-256 (hex) of the completion token."""

    deadline = db.Column(db.UTCDateTime, nullable=False)
    """When the token expires and the sweeper fails the waiting task."""

    completion_digest = db.Column(db.String(64), nullable=True)
    """SHA-256 (hex) of the completion applied (status, result and message)."""

    completed_at = db.Column(db.UTCDateTime, nullable=True)
    """When the external system's completion was applied."""


class Uptime(db.Model):
    """Since when the database has run without a crash, as far as the engine knows.

    One row, in a table that is ``UNLOGGED`` on PostgreSQL: recovering from
    a crash empties it. Written when the table is created, with the epoch
    (no crash known: :data:`UPTIME_ROW`); the sweeper writes it again, with
    its time, when it finds none, and then holds back the attempts queued
    before (see :mod:`~invenio_wtflow.engine.uptime`).
    """

    __tablename__ = "wtflow_uptime"

    id = db.Column(db.Integer, primary_key=True, autoincrement=False)
    """Always 1."""

    since = db.Column(db.UTCDateTime, nullable=False)
    """When the sweeper found the table emptied by a crash; the epoch before any."""


UPTIME_ROW = "INSERT INTO wtflow_uptime (id, since) VALUES (1, 'epoch')"
"""The uptime row of a new table (PostgreSQL): no crash known, nothing held back."""

for statement in ("ALTER TABLE wtflow_uptime SET UNLOGGED", UPTIME_ROW):
    event.listen(
        Uptime.__table__,
        "after_create",
        DDL(statement).execute_if(dialect="postgresql"),
    )
