# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Create, start and watch one run of the demo's video workflow.

Run from the repository's root, with a worker of ``examples.demo_site``
running (``./run-demo.sh`` starts one)::

    python -m examples.run_demo [--timeout SECONDS] [--video-id ID]

It creates the tables, creates and starts a run, then polls the database every
0.3 s and prints each change of a task or of the run as recorded by
SQLAlchemy-Continuum (so no transition is missed, however short), and at the
end the final status, the result and every task's history. Exit status: 0 when
the run succeeded, 1 when it failed or was cancelled, 2 on timeout, 3 when the
worker (``WTFLOW_DEMO_WORKER_PID``) died.
"""

import argparse
import os
import sys
import time
from datetime import timezone

import sqlalchemy as sa
from invenio_db import db
from sqlalchemy_continuum import transaction_class, version_class

from examples.demo_site import flask_app as app
from invenio_wtflow import Workflow
from invenio_wtflow.models import TaskRun, WorkflowRun, WorkflowStatus

POLL_INTERVAL = 0.3
"""Seconds between two looks at the database."""


def short(name):
    """Return the last dotted part of a Celery task name."""
    return name.rsplit(".", 1)[-1]


def clock(issued_at):
    """Format a Continuum ``issued_at`` (naive UTC) as local wall-clock time."""
    return issued_at.replace(tzinfo=timezone.utc).astimezone().strftime("%H:%M:%S")


def details(version, with_attempt=False):
    """Return the ``(message, progress)`` part of a change line."""
    parts = []
    if with_attempt:
        part = f"attempt {version.attempt}"
        if version.retries:
            part += f", Celery retry {version.retries}"
        parts.append(part)
    if version.progress is not None:
        parts.append(f"{version.progress:.0%}")
    if version.message:
        parts.append(version.message)
    if version.status == "failure" and version.error:
        parts.append(version.error)
    return f"  ({'; '.join(parts)})" if parts else ""


class Watcher:
    """Print the changes recorded for a run since the last poll."""

    def __init__(self, workflow_id, names):
        """Watch the run ``workflow_id``; ``names`` maps task id to label."""
        self.workflow_id = workflow_id
        self.names = names
        self.width = max(len(n) for n in names.values())
        self.seen = set()
        self.last = {}
        self.TaskVersion = version_class(TaskRun)
        self.WorkflowVersion = version_class(WorkflowRun)
        self.Transaction = transaction_class(TaskRun)

    def _versions(self, version_cls, *criteria):
        return (
            db.session.query(version_cls, self.Transaction.issued_at)
            .join(self.Transaction, self.Transaction.id == version_cls.transaction_id)
            .filter(*criteria)
            .all()
        )

    def poll(self):
        """Print what changed and return the run's current status."""
        # Within a transaction: tasks by position, then the run (order -1 is
        # sorted last), as the run's status follows from its tasks'.
        changes = [
            (v.transaction_id, -1, v, at)
            for v, at in self._versions(
                self.WorkflowVersion, self.WorkflowVersion.id == self.workflow_id
            )
        ] + [
            (v.transaction_id, v.position, v, at)
            for v, at in self._versions(
                self.TaskVersion, self.TaskVersion.workflow_id == self.workflow_id
            )
        ]
        changes.sort(key=lambda c: (c[0], c[1] < 0, c[1]))
        for transaction_id, order, version, at in changes:
            key = (order, transaction_id)
            if key in self.seen:
                continue
            self.seen.add(key)
            self._print(order, version, at)
        status = db.session.execute(
            sa.select(WorkflowRun.status).where(WorkflowRun.id == self.workflow_id)
        ).scalar_one()
        # End the (BEGIN IMMEDIATE) transaction at once: the worker writes.
        db.session.rollback()
        return status

    def _print(self, order, version, at):
        label = "workflow" if order < 0 else self.names[version.id]
        before = self.last.get(order)
        self.last[order] = version
        if before is None:
            line, extra = f"created {version.status}", ""
        elif order < 0:
            if before.status == version.status:
                return
            line = f"{before.status} -> {version.status}"
            extra = f"  ({version.message})" if version.message else ""
        elif before.status != version.status or before.attempt != version.attempt:
            line = f"{before.status} -> {version.status}"
            extra = details(version, with_attempt=True)
        else:
            line, extra = version.status, details(version)
        print(f"{clock(at)}  {label:<{self.width}}  {line}{extra}", flush=True)


def worker_alive():
    """Whether the worker process run-demo.sh started is still there."""
    pid = os.environ.get("WTFLOW_DEMO_WORKER_PID")
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def report(workflow_id):
    """Print the final status, the result and the history of every task."""
    wf = Workflow.get(workflow_id)
    print()
    print(f"Workflow {wf.name} {wf.id}")
    print(f"  status:  {wf.status}" + (f" ({wf.message})" if wf.message else ""))
    print(f"  result:  {wf.result!r}")
    for task in wf.tasks:
        print(f"\n  {short(task.name)} (node {task.position}): {task.status}")
        if task.error:
            print(f"    error: {task.error}")
        print(f"    result: {task.result!r}")
        print("    history (Task.history()):")
        for h in task.history():
            progress = "" if h["progress"] is None else f"{h['progress']:.0%}"
            print(
                f"      {clock(h['issued_at'])}  tx {h['transaction_id']:<4} "
                f"{h['status']:<9} attempt {h['attempt']} retries {h['retries']} "
                f"{progress:>4}  {h['message'] or ''}".rstrip()
            )
    db.session.rollback()
    return wf.status


def main(argv=None):
    """Run the demo; return the process's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video-id", default="42", help="the run's video_id")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("WTFLOW_DEMO_TIMEOUT", 120)),
        help="seconds to wait for the run to finish (default 120)",
    )
    args = parser.parse_args(argv)

    with app.app_context():
        print(f"Demo directory: {app.config['WTFLOW_DEMO_DIR']}")
        db.create_all()

        wf = Workflow.create("video", data={"video_id": args.video_id})
        names = {t.id: short(t.name) for t in wf.tasks}
        print(f"Created {wf!r} with {len(names)} pending tasks")
        watcher = Watcher(wf.id, names)
        watcher.poll()
        started = time.monotonic()
        wf.start()
        print("Started; watching the database every 0.3 s ...", flush=True)

        code = None
        while True:
            status = watcher.poll()
            if WorkflowStatus(status).is_terminal:
                break
            if time.monotonic() - started > args.timeout:
                print(
                    f"\nTIMEOUT: the run is still {status} after {args.timeout:.0f} s"
                )
                code = 2
                break
            if not worker_alive():
                print("\nERROR: the worker process has died")
                code = 3
                break
            time.sleep(POLL_INTERVAL)
        elapsed = time.monotonic() - started

        status = report(wf.id)
        print(f"\nFinished in {elapsed:.1f} s: {status}")
        if code is None:
            code = 0 if status == WorkflowStatus.SUCCESS.value else 1
        return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)
