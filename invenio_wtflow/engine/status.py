# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The rule that derives a workflow's status from its tasks' statuses."""

from ..models import TaskStatus, WorkflowStatus


def default_rule(method):
    """Mark a ``compute_status`` method that applies :func:`default_status` as it is.

    The engine records some successes without the root lock when it can
    prove, by this rule, that they leave the run's status unchanged; a
    definition class that overrides ``compute_status`` loses that.
    """
    method.is_default_rule = True
    return method


def default_status(counts):
    """Derive a workflow status from the number of tasks in each status.

    The rule, first match wins:

    1. any task ``failure``: ``failure``;
    2. any task ``queued`` or ``running``: ``running``;
    3. any task ``waiting``: ``waiting``;
    4. every task ``success`` (or no task at all): ``success``;
    5. any task ``cancelled`` and none left ``pending``: ``cancelled``
       (the run was stopped);
    6. every task ``pending``: ``pending``;
    7. otherwise (some done, some not yet queued): ``running``.

    :param counts: mapping of task status (string) to number of tasks.
    """
    count = {TaskStatus(k): v for k, v in counts.items() if v}
    total = sum(count.values())
    if count.get(TaskStatus.FAILURE):
        return WorkflowStatus.FAILURE
    if count.get(TaskStatus.QUEUED) or count.get(TaskStatus.RUNNING):
        return WorkflowStatus.RUNNING
    if count.get(TaskStatus.WAITING):
        return WorkflowStatus.WAITING
    if count.get(TaskStatus.SUCCESS, 0) == total:
        return WorkflowStatus.SUCCESS
    if count.get(TaskStatus.CANCELLED) and not count.get(TaskStatus.PENDING):
        return WorkflowStatus.CANCELLED
    if count.get(TaskStatus.PENDING) == total:
        return WorkflowStatus.PENDING
    return WorkflowStatus.RUNNING


def default_status_sql(column):
    """:func:`default_status` in SQL: an aggregate over a column of task statuses.

    The rule's SQL twin, for a statement that derives a run's status from
    its tasks' rows (see :func:`~invenio_wtflow.engine.fused.finish`); the
    tests hold the two to the same answers.

    :param column: the SQL expression of a task's status, one row per task
        (at least one row).
    """

    def any_(*statuses):
        values = ", ".join(f"'{status.value}'" for status in statuses)
        return f"bool_or({column} IN ({values}))"

    def all_(status):
        return f"bool_and({column} = '{status.value}')"

    return (
        f"CASE WHEN {any_(TaskStatus.FAILURE)} THEN '{WorkflowStatus.FAILURE.value}' "
        f"WHEN {any_(TaskStatus.QUEUED, TaskStatus.RUNNING)} "
        f"THEN '{WorkflowStatus.RUNNING.value}' "
        f"WHEN {any_(TaskStatus.WAITING)} THEN '{WorkflowStatus.WAITING.value}' "
        f"WHEN {all_(TaskStatus.SUCCESS)} THEN '{WorkflowStatus.SUCCESS.value}' "
        f"WHEN {any_(TaskStatus.CANCELLED)} AND NOT {any_(TaskStatus.PENDING)} "
        f"THEN '{WorkflowStatus.CANCELLED.value}' "
        f"WHEN {all_(TaskStatus.PENDING)} THEN '{WorkflowStatus.PENDING.value}' "
        f"ELSE '{WorkflowStatus.RUNNING.value}' END"
    )
