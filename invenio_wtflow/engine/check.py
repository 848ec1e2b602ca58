# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Consistency check of a workflow run: the invariants, read from the rows.

Used at the end of the concurrency and fault tests, and by operators through
``invenio wtflow check <id>``. It only reads.
"""

from collections import defaultdict

from invenio_db import db
from sqlalchemy import select

from ..errors import WorkflowNotFoundError
from ..models import (
    ACTIVE_TASK_STATUSES,
    TERMINAL_TASK_STATUSES,
    TaskDelegation,
    TaskRun,
    TaskStatus,
    WorkflowRun,
    WorkflowStatus,
)
from .orchestrator import downstream_of, edges, status_rule


def check_workflow(workflow_id):
    """Return the problems found in a run (an empty list when consistent).

    Checked, for every task: the join counter equals its unfinished
    dependencies while it is ``pending``; a task that was queued, runs or
    succeeded has all its dependencies successful; an active attempt has a
    Celery id and a running one a lease; what depends on a failed task is
    cancelled. For the run: its status is the rule applied to its tasks, and a
    finished run has no active task. For child runs: a task joining children
    counts exactly those not finished yet (and is not left waiting once all
    have), a task that failed or was cancelled has no child with unfinished
    tasks, and a child shares its parent's root. For nodes the orchestrator
    runs (``populate``, callbacks): a queued one has a pass asked for on the
    root, and none is left running. For delegated tasks: a task waiting on no
    children waits on a delegation of its current attempt, not yet completed,
    with a token hash and a deadline; a completion applied to the current
    attempt left the task ``success`` or ``failure``; no delegation belongs to
    an attempt the task has not reached.

    :param workflow_id: the run's id.
    :raises WorkflowNotFoundError: when there is no such run.
    """
    workflow = db.session.get(WorkflowRun, workflow_id)
    if workflow is None:
        raise WorkflowNotFoundError(workflow_id)
    tasks = {t.id: t for t in TaskRun.query.filter_by(workflow_id=workflow.id).all()}
    dependants, dependencies = edges(workflow.id)

    problems = []

    def problem(task, message):
        problems.append(f"task {task.name} (node {task.position}): {message}")

    spawned = defaultdict(list)
    for child in WorkflowRun.query.filter_by(parent_id=workflow.id):
        spawned[child.parent_task_id].append(child)
        if child.root_id != workflow.root_id:
            problems.append(f"child {child.id} has another root ({child.root_id})")
        if child.parent_task_id not in tasks:
            problems.append(f"child {child.id} names a task of another run")
    live = _with_active_tasks([c.id for cs in spawned.values() for c in cs])
    root = db.session.get(WorkflowRun, workflow.root_id) or workflow
    orchestrating = root.orchestration_queued_at is not None
    delegations = defaultdict(dict)
    for record in TaskDelegation.query.join(
        TaskRun, TaskRun.id == TaskDelegation.task_id
    ).filter(TaskRun.workflow_id == workflow.id):
        delegations[record.task_id][record.attempt] = record

    for task in sorted(tasks.values(), key=lambda t: t.position):
        status = TaskStatus(task.status)
        unfinished = [
            tasks[d]
            for d in dependencies[task.id]
            if tasks[d].status != TaskStatus.SUCCESS.value
        ]
        if status is TaskStatus.PENDING and task.remaining != len(unfinished):
            problem(
                task,
                f"join counter is {task.remaining} but {len(unfinished)} "
                "dependencies are unfinished",
            )
        if unfinished and (status in ACTIVE_TASK_STATUSES or status.value == "success"):
            names = ", ".join(f"node {t.position} ({t.status})" for t in unfinished)
            problem(
                task, f"is {status.value} although upstream {names} did not succeed"
            )
        if status in ACTIVE_TASK_STATUSES and task.kind is None and not task.celery_id:
            problem(task, f"is {status.value} without a Celery id")
        if status is TaskStatus.QUEUED and task.kind is not None and not orchestrating:
            problem(task, "is queued but no orchestrator pass is asked for")
        if task.kind is not None and status in (TaskStatus.RUNNING, TaskStatus.WAITING):
            problem(task, f"is {status.value} outside an orchestrator pass")
        if (
            status is TaskStatus.RUNNING
            and task.kind is None
            and task.lease_expires_at is None
        ):
            problem(task, "is running without a lease")
        if status is TaskStatus.WAITING and task.joined:
            _check_join(task, spawned[task.id], problem)
        _check_delegations(task, delegations[task.id], problem)
        if status in (TaskStatus.FAILURE, TaskStatus.CANCELLED):
            for child in spawned[task.id]:
                if child.id in live:
                    problem(
                        task,
                        f"is {status.value} but child {child.id} still has "
                        "unfinished tasks",
                    )
        if status is TaskStatus.FAILURE:
            for child in downstream_of([task.id], dependants):
                if tasks[child].status != TaskStatus.CANCELLED.value:
                    problem(
                        tasks[child],
                        f"is {tasks[child].status} downstream of failed "
                        f"node {task.position}",
                    )

    counts = defaultdict(int)
    for task in tasks.values():
        counts[task.status] += 1
    expected = WorkflowStatus(status_rule(workflow)(dict(counts)))
    if workflow.status != expected.value:
        problems.append(
            f"workflow status is {workflow.status}, its tasks say {expected.value}"
        )
    if WorkflowStatus(workflow.status).is_terminal and any(
        TaskStatus(t.status) in ACTIVE_TASK_STATUSES for t in tasks.values()
    ):
        problems.append(f"workflow is {workflow.status} with tasks still active")
    return problems


def _with_active_tasks(workflow_ids):
    """Return the ids, among ``workflow_ids``, of runs with unfinished tasks."""
    if not workflow_ids:
        return set()
    return set(
        db.session.execute(
            select(TaskRun.workflow_id)
            .where(
                TaskRun.workflow_id.in_(workflow_ids),
                TaskRun.status.notin_([s.value for s in TERMINAL_TASK_STATUSES]),
            )
            .distinct()
        ).scalars()
    )


def _check_join(task, spawned, problem):
    """A waiting task's counter equals its joined children not finished yet."""
    by_id = {str(child.id): child for child in spawned}
    joined = task.joined["children"]
    strangers = [i for i in joined if i not in by_id]
    if strangers:
        problem(task, f"joins runs it did not spawn: {', '.join(strangers)}")
    unfinished = [
        i
        for i in joined
        if i in by_id and not WorkflowStatus(by_id[i].status).is_terminal
    ]
    if task.remaining != len(unfinished):
        problem(
            task,
            f"join counter is {task.remaining} but {len(unfinished)} joined "
            "children are unfinished",
        )
    if not unfinished:
        problem(task, "is still waiting although every joined child has finished")


def _check_delegations(task, delegations, problem):
    """A delegated task waits on its attempt's open delegation, or has ended."""
    current = delegations.get(task.attempt)
    completed = current is not None and current.completed_at is not None
    if task.status == TaskStatus.WAITING.value and not task.joined:
        if current is None:
            problem(task, f"is waiting without a delegation of attempt {task.attempt}")
        elif completed:
            problem(task, "is still waiting although its completion was applied")
    elif completed and task.status not in (
        TaskStatus.SUCCESS.value,
        TaskStatus.FAILURE.value,
    ):
        problem(
            task,
            f"is {task.status} although the completion of attempt "
            f"{task.attempt} was applied",
        )
    for attempt, record in sorted(delegations.items()):
        if attempt > task.attempt:
            problem(
                task,
                f"has a delegation of attempt {attempt}, beyond its attempt "
                f"{task.attempt}",
            )
        if not _is_sha256(record.token_hash) or record.deadline is None:
            problem(
                task,
                f"delegation of attempt {attempt} lacks a token hash or a deadline",
            )


def _is_sha256(value):
    """Whether a value looks like a SHA-256 in hex."""
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value)
    )
