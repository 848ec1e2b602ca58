# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Command line interface: ``invenio wtflow ...`` (or ``flask wtflow ...``)."""

import functools
import json
import sys
from time import monotonic, sleep

import click
from flask import current_app
from flask.cli import with_appcontext
from invenio_db import db

from .api import Task, Workflow
from .engine.check import check_workflow
from .engine.dispatch import requeue_stale
from .errors import WTFlowError
from .models import TERMINAL_TASK_STATUSES, WorkflowStatus
from .schemas import HistoryEntrySchema, TaskDetailSchema, WorkflowSchema

ERROR, FAILED, TIMED_OUT = 2, 1, 3
"""Exit codes: a command error, a waited-for run that failed, a wait timed out."""

TERMINAL = {s.value for s in WorkflowStatus if s.is_terminal}
DONE = {s.value for s in TERMINAL_TASK_STATUSES}


def _fail(message, code=ERROR):
    """Return a :class:`click.ClickException` printed as one line on stderr."""
    error = click.ClickException(" ".join(str(message).split()))
    error.exit_code = code
    return error


@click.group()
def wtflow():
    """Create, watch, stop and restart workflow runs.

    Exit codes: 0 when the command succeeded, 1 when a run waited for with
    --wait ended in failure or was cancelled, 2 on an error (unknown name or
    id, invalid data, an action the run's status does not allow), 3 when
    --wait timed out.
    """


def _command(name=None):
    """Declare a subcommand run in the app context, with one-line errors."""

    def decorator(f):
        @functools.wraps(f)
        def run(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except WTFlowError as exc:
                raise _fail(exc) from exc

        return wtflow.command(name)(with_appcontext(run))

    return decorator


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (for scripts)."
)
data_option = click.option(
    "--data", "data_json", metavar="JSON", help="Workflow data, a JSON object."
)
task_option = click.option(
    "--task", "task_id", metavar="TASK_ID", help="Act on this task of the run."
)


#
# Helpers
#
def _parse_data(text):
    """Parse ``--data`` into a dictionary."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _fail(f"--data is not valid JSON: {exc}.")
    if not isinstance(data, dict):
        raise _fail(f"--data must be a JSON object, not {type(data).__name__}.")
    return data


def _task_of(workflow, task_id):
    """Return a task of the run, refusing another run's task."""
    task = Task.get(task_id)
    if task.workflow_id != workflow.id:
        raise _fail(f"Run {workflow.id} has no task {task_id}.")
    return task


def _time(value):
    """Format a timestamp (UTC) to the second."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _text(value):
    """Return a cell's text on one line."""
    return " ".join(str(value).split()) if value is not None else ""


def _table(rows, indent=""):
    """Print rows as left-aligned columns."""
    rows = [[_text(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths))
        click.echo((indent + "  ".join(cells)).rstrip())


def _echo_json(payload):
    """Print a payload as indented JSON."""
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _dump(workflow, tasks=True, errors=False):
    """Serialise a run as the REST API does (tasks with their errors)."""
    payload = WorkflowSchema(exclude=("tasks", "links")).dump(workflow.model)
    if tasks:
        edges = workflow.dependencies()
        schema = TaskDetailSchema(
            exclude=("links", "workflow_id") + (() if errors else ("traceback",))
        )
        payload["tasks"] = [
            dict(
                schema.dump(task.model),
                depends_on=sorted(str(i) for i in edges.get(task.id, [])),
            )
            for task in workflow.tasks
        ]
    return payload


def _node_name(task):
    """A task's name, marked when the orchestrator runs it, with its key."""
    name = task.name if task.kind is None else f"{task.name} ({task.kind})"
    return name if task.key is None else f"{name} [{task.key}]"


def _echo_tree(workflow, errors=False):
    """Print a run, then its tasks in graph order (indented)."""
    model = workflow.model
    click.echo(f"{model.name} {model.id}  {model.status}")
    click.echo(
        f"  created {_time(model.created)}  started {_time(model.started_at)}"
        f"  finished {_time(model.finished_at)}"
    )
    if model.message:
        click.echo(f"  {_text(model.message)}")
    if model.parent_id is not None:
        click.echo(f"  child of {model.parent_id} (task {model.parent_task_id})")
    children = workflow.children_by_status()
    if children:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(children.items()))
        click.echo(f"  children: {sum(children.values())} ({counts})")
    tasks = workflow.tasks
    positions = {task.id: task.position for task in tasks}
    edges = workflow.dependencies()
    rows = []
    for task in tasks:
        after = sorted(positions[i] for i in edges.get(task.id, []))
        rows.append(
            [
                f"#{task.position}",
                task.status,
                f"attempt {task.attempt}",
                "" if task.progress is None else f"{task.progress:.0%}",
                "after " + ", ".join(f"#{p}" for p in after) if after else "",
                _node_name(task),
                task.id,
                task.message or task.error,
            ]
        )
    if rows:
        _table(rows, indent="  ")
    if errors:
        for task in tasks:
            if task.status == "failure":
                click.echo(f"  #{task.position} error: {_text(task.error)}")
                for line in (task.model.traceback or "").rstrip().splitlines():
                    click.echo(f"      {line}")


def _wait(workflow, timeout, interval, show_progress):
    """Poll the database until the run is terminal; return it."""
    deadline = None if timeout is None else monotonic() + timeout
    bar = click.progressbar(
        length=max(len(workflow.tasks), 1),
        label=f"Waiting for {workflow.id}",
        file=sys.stderr,
        hidden=not show_progress,
    )
    with bar:
        while True:
            tasks = workflow.tasks
            bar.length = max(len(tasks), 1)
            bar.update(sum(t.status in DONE for t in tasks) - bar.pos)
            if workflow.status in TERMINAL:
                return workflow
            if deadline is not None and monotonic() >= deadline:
                raise _fail(
                    f"Timed out after {timeout:g}s: run {workflow.id} is "
                    f"{workflow.status}.",
                    code=TIMED_OUT,
                )
            sleep(interval)
            db.session.rollback()  # end the read: see what workers committed
            workflow = Workflow.get(workflow.id)


#
# Commands
#
@_command("list")
@click.option("--name", help="Only runs of this definition.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus]),
    help="Only runs in this status.",
)
@click.option("--created-by", type=int, help="Only runs created by this user id.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="Runs per page [WTFLOW_DEFAULT_PAGE_SIZE].",
)
@json_option
def list_runs(name, status, created_by, page, size, as_json):
    """List workflow runs, newest first."""
    size = size or current_app.config["WTFLOW_DEFAULT_PAGE_SIZE"]
    runs, total = Workflow.search(
        page=page, size=size, name=name, status=status, created_by=created_by
    )
    if as_json:
        hits = [_dump(run, tasks=False) for run in runs]
        return _echo_json({"hits": hits, "total": total, "page": page, "size": size})
    if runs:
        _table(
            [("ID", "NAME", "STATUS", "CREATED", "MESSAGE")]
            + [
                (r.id, r.name, r.status, _time(r.model.created), r.message)
                for r in runs
            ]
        )
    click.echo(f"Page {page}: {len(runs)} of {total} runs.")


@_command()
@click.argument("workflow_id")
@click.option("--errors", is_flag=True, help="Show the failed tasks' tracebacks.")
@json_option
def show(workflow_id, errors, as_json):
    """Show a run and its tasks in graph order."""
    workflow = Workflow.get(workflow_id)
    if as_json:
        return _echo_json(_dump(workflow, errors=errors))
    _echo_tree(workflow, errors=errors)


@_command()
@click.argument("name")
@data_option
@click.option("--key", help="Idempotency key: reuse the run with this name and key.")
@click.option("--wait", is_flag=True, help="Wait until the run has finished.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --wait: give up after this long (exit code 3).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait: time between two looks at the database.",
)
@json_option
@click.pass_context
def start(ctx, name, data_json, key, wait, timeout, interval, as_json):
    """Create a run of the definition NAME and start it."""
    data = _parse_data(data_json)
    workflow = Workflow.create(name, data=data, key=key, start=True)
    never_started = (
        workflow.status == WorkflowStatus.PENDING.value
        and workflow.model.slot_requested_at is None
    )
    if not workflow.created_now and never_started:
        workflow.start()  # created with this key earlier, and never started
    elif not workflow.created_now and not as_json:
        click.echo(f"Run {workflow.id} has the key {key!r} already.", err=True)
    if wait:
        workflow = _wait(workflow, timeout, interval, show_progress=not as_json)
    if as_json:
        _echo_json(_dump(workflow))
    elif wait:
        _echo_tree(workflow)
    else:
        click.echo(f"Started {workflow.name} {workflow.id}: {workflow.status}")
    if wait and workflow.status != WorkflowStatus.SUCCESS.value:
        ctx.exit(FAILED)


@_command()
@click.argument("workflow_id")
@json_option
def stop(workflow_id, as_json):
    """Cancel every unfinished task of a run and revoke running attempts."""
    workflow = Workflow.get(workflow_id).stop()
    if as_json:
        return _echo_json(_dump(workflow))
    click.echo(f"Stopped {workflow.name} {workflow.id}: {workflow.status}")


@_command()
@click.argument("workflow_id")
@task_option
@data_option
@json_option
def restart(workflow_id, task_id, data_json, as_json):
    """Run a whole run again (same id), or one task and what depends on it.

    The --data object is merged over the run's data.
    """
    data = _parse_data(data_json)
    workflow = Workflow.get(workflow_id)
    if task_id is None:
        workflow.restart(**data)
    else:
        _task_of(workflow, task_id).restart(**data)
    workflow = Workflow.get(workflow.id)
    if as_json:
        return _echo_json(_dump(workflow))
    what = f"task {task_id} of " if task_id else ""
    click.echo(f"Restarted {what}{workflow.name} {workflow.id}: {workflow.status}")


@_command()
@click.argument("workflow_id")
@task_option
@json_option
def history(workflow_id, task_id, as_json):
    """Show the recorded changes of a run (or of one task), oldest first."""
    workflow = Workflow.get(workflow_id)
    entries = (_task_of(workflow, task_id) if task_id else workflow).history()
    if as_json:
        return _echo_json({"hits": HistoryEntrySchema(many=True).dump(entries)})
    _table(
        [("TIME", "STATUS", "ATTEMPT", "MESSAGE")]
        + [
            (_time(e["issued_at"]), e["status"], e.get("attempt", "-"), e["message"])
            for e in entries
        ]
    )


@_command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Re-publish attempts queued longer ago [WTFLOW_REQUEUE_AFTER].",
)
@json_option
def requeue(older_than, as_json):
    """Run the sweeper once: re-publish, recover or time out attempts."""
    count = requeue_stale(older_than=older_than)
    if as_json:
        return _echo_json({"requeued": count})
    click.echo(f"Re-published, recovered or timed out {count} attempt(s).")


@_command()
@click.argument("workflow_id")
@json_option
def check(workflow_id, as_json):
    """Check a run's consistency; exit 1 when a problem is found."""
    workflow = Workflow.get(workflow_id)
    problems = check_workflow(workflow.id)
    if as_json:
        _echo_json({"id": str(workflow.id), "problems": problems})
    elif problems:
        for line in problems:
            click.echo(line)
    else:
        click.echo(f"{workflow.id}: consistent.")
    if problems:
        raise click.exceptions.Exit(FAILED)
