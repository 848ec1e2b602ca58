# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Create, start, serve and watch one run of the demo's video workflow.

Run from the repository's root, with a worker of ``examples.demo_site``
running (``./run-demo.sh`` starts one)::

    python -m examples.run_demo [--once] [--timeout SECONDS] [--video-id ID]

It creates the tables, serves the site (the REST API under ``/api/workflows``
and the status pages under ``/workflows``) on ``127.0.0.1``, starts a pretend
subtitle farm, then creates and starts a run and prints each change of the
run, of its tasks and of its child runs as SQLAlchemy-Continuum recorded it
(polling the database every 0.3 s, so no transition is missed). Along the
way:

* the 1080p child workflow crashes on its first run, which fails the join
  and the run; the demo then restarts the failed task through the REST API,
  as a person would with the status page's button, and the task reuses the
  children that succeeded and runs the failed one again;
* the subtitle task hands its work to the farm, which completes it over HTTP
  with the token it was given, through the real completion endpoint.

At the end it prints the result and every task's history, and the status
page's address; it keeps serving until Ctrl-C, unless ``--once``. Exit
status: 0 when the run succeeded, 1 when it failed or was cancelled, 2 on
timeout, 3 when the worker (``WTFLOW_DEMO_WORKER_PID``) died.
"""

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timezone

import sqlalchemy as sa
from invenio_db import db
from sqlalchemy_continuum import transaction_class, version_class
from werkzeug.serving import make_server

from examples.demo_site import flask_app as app
from invenio_wtflow import Workflow
from invenio_wtflow.models import TaskRun, WorkflowRun, WorkflowStatus

POLL_INTERVAL = 0.3
"""Seconds between two looks at the database."""

QUALITIES = ["480p", "720p", "1080p"]
"""One child workflow each."""

FARM_DELAY = 2.0
"""Seconds the pretend subtitle farm takes before it reports back."""


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
    """Print the changes recorded for a run and its children since the last poll."""

    def __init__(self, workflow_id, names):
        """Watch the run ``workflow_id``; ``names`` maps task id to label."""
        self.workflow_id = workflow_id
        self.names = {workflow_id: "workflow", **names}
        self.orders = {workflow_id: -1}
        self.width = 20
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

    def _children(self):
        """Name the child runs spawned so far (order -2, -3, ...)."""
        for child_id, data in db.session.execute(
            sa.select(WorkflowRun.id, WorkflowRun.data)
            .where(WorkflowRun.parent_id == self.workflow_id)
            .order_by(WorkflowRun.spawn_index)
        ):
            if child_id not in self.orders:
                self.orders[child_id] = -2 - len(self.orders)
                self.names[child_id] = f"  child {data.get('quality', child_id)}"

    def poll(self):
        """Print what changed and return the run's current status."""
        self._children()
        # Within a transaction: tasks by position, then the runs (negative
        # orders are sorted last), as a run's status follows from its tasks'.
        changes = [
            (v.transaction_id, self.orders[v.id], v, at)
            for v, at in self._versions(
                self.WorkflowVersion, self.WorkflowVersion.id.in_(list(self.orders))
            )
        ] + [
            (v.transaction_id, v.position, v, at)
            for v, at in self._versions(
                self.TaskVersion, self.TaskVersion.workflow_id == self.workflow_id
            )
        ]
        changes.sort(key=lambda c: (c[0], c[1] < 0, -c[1] if c[1] < 0 else c[1]))
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
        label = self.names[version.id]
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


def serve(port):
    """Serve the site on 127.0.0.1 in a thread; return the server."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def call(method, url, body=None, token=None):
    """Send a JSON request; return ``(HTTP status, decoded body)``."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


class SubtitleFarm(threading.Thread):
    """A pretend external service: takes jobs from its inbox, reports over HTTP.

    It knows nothing of the engine: a job is a completion URL, a token and
    the files; it answers with ``POST <url>`` and ``Authorization: Bearer``,
    as a real farm would.
    """

    def __init__(self, inbox):
        """Watch ``inbox`` for job files."""
        super().__init__(daemon=True)
        self.inbox = inbox
        self.done = set()

    def run(self):
        """Pick up each job once, work on it, report."""
        while True:
            for name in sorted(os.listdir(self.inbox)):
                if name in self.done or not name.endswith(".json"):
                    continue
                self.done.add(name)
                with open(os.path.join(self.inbox, name)) as fp:
                    job = json.load(fp)
                time.sleep(FARM_DELAY)
                status, _ = call(
                    "POST",
                    job["url"],
                    {
                        "status": "success",
                        "result": {"tracks": ["en", "fr"], "files": job["files"]},
                        "message": "subtitled by the farm",
                    },
                    token=job["token"],
                )
                print(f"{'':8}  {'subtitle farm':<20}  POST .../complete -> {status}")
            time.sleep(0.2)


def restart_failed(base, workflow_id):
    """Restart the failed task through the REST API, as the status page does."""
    wf = Workflow.get(workflow_id)
    message = wf.message
    failed = [(t.id, short(t.name)) for t in wf.tasks if t.status == "failure"]
    # End the read before the request: the next poll must see its effect.
    db.session.rollback()
    for task_id, name in failed:
        url = f"{base}/api/workflows/{workflow_id}/tasks/{task_id}"
        print(
            f"\nThe run failed ({message}).\n"
            f"Restarting task {name} as a person would: PUT {url}",
            flush=True,
        )
        status, body = call("PUT", url, {"data": {}})
        print(f"  -> HTTP {status}: task {body.get('status', body)}\n", flush=True)
    return bool(failed)


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
    parser.add_argument(
        "--once", action="store_true", help="exit after the run (do not keep serving)"
    )
    args = parser.parse_args(argv)

    with app.app_context():
        print(f"Demo directory: {app.config['WTFLOW_DEMO_DIR']}")
        db.create_all()
        port = app.config["WTFLOW_DEMO_PORT"]
        base = f"http://127.0.0.1:{port}"
        server = serve(port)
        SubtitleFarm(os.path.join(app.config["WTFLOW_DEMO_DIR"], "farm-inbox")).start()

        wf = Workflow.create(
            "video", data={"video_id": args.video_id, "qualities": QUALITIES}
        )
        names = {t.id: short(t.name) for t in wf.tasks}
        print(f"Created {wf!r} with {len(names)} pending tasks")
        page = f"{base}/workflows/{wf.id}"
        print(f"Status page (live): {page}")
        watcher = Watcher(wf.id, names)
        watcher.poll()
        started = time.monotonic()
        wf.start()
        print("Started; watching the database every 0.3 s ...", flush=True)

        code, restarted = None, False
        while True:
            status = watcher.poll()
            if status == WorkflowStatus.FAILURE.value and not restarted:
                restarted = restart_failed(base, wf.id)
                continue
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
        if not args.once:
            print(f"\nStatus page: {page}\nAll runs:    {base}/workflows/")
            print("Serving until Ctrl-C ...", flush=True)
            try:
                while worker_alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        server.shutdown()
        return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)
