# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Where B3's latency goes, step by step, in the caller and in the worker.

Runs B3's one-task workflow (``bench-one``) in sequence on the same worker
as B3 and marks, on the machine's monotonic clock (the same in every
process), when each step of a run begins:

- in the caller: the submit, the creation's statement sent and answered,
  the publish begun and done, ``create`` returned, the notification heard
  (``wait()`` then knows the status) and ``wait()`` returned;
- in the worker's pool process: the task called, the claim's statement
  sent and answered, the attempt's arguments ready, the success's
  statement sent (its answer comes after the caller heard it).

Each statement is marked too as it leaves the driver's cursor and as its
answer is read (``caller sql 1 sent``, ``worker sql 2 back``...): the time
between the two is its round trip, the rest of a step is Python.

It prints the median of each step since the submit, and since the step
before. A worker's marks belong to the run whose attempt (by Celery id) the
pool process is running: with several pool processes, a run's last marks
(the success's answer) may come after the next run's submit, and from
another process than the next run's. :mod:`benchmarks.b3_timeline` reads
the times the rows record instead; this script sees the statements from
the client's side, which is how they cost: in this flow each takes about
twice as long as the same statement sent in a tight loop. No baseline, no
pairs: a diagnostic, not a scenario (not run by ``run.sh``)::

    python -m benchmarks.b3_steps [runs]
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from invenio_db import db

from invenio_wtflow import Workflow

from .common import Worker, bench_app, truncate_runs, warm_up

RUNS = 300

MARKS = "WTFLOW_BENCH_STEPS"
"""Environment variable naming the file prefix the worker's marks go to."""


def install_marks(mark, caller):
    """Wrap the engine's steps so that each calls ``mark(label)`` as it begins.

    Each statement sent on the driver's cursor (see
    :func:`~invenio_wtflow.engine.prepared._sent`: nothing watches the
    benchmark's engine) is marked too, as it leaves and as its answer is
    read: ``caller sql 1 sent``, ``worker sql 2 back``..., counted from the
    creation (caller) or the task's call (worker). The caller also marks
    ``attempt <celery id>`` as it publishes; the worker's marks are
    ``mark(label, celery_id)``, with the id of the attempt it runs.

    :param caller: wrap the caller's steps (else the worker's).
    """
    from invenio_wtflow import tasks
    from invenio_wtflow.engine import dispatch, fused, prepared, waiting

    sent, side, attempt = [0], "caller" if caller else "worker", [None]

    def step(label):
        if label in ("creation sent", "task called"):
            sent[0] = 0
        if caller:
            mark(label)
        else:
            mark(label, attempt[0])

    def around(owner, name, begin, end=None):
        inner = getattr(owner, name)

        def marked(*args, **kwargs):
            if begin:
                step(begin)
            try:
                return inner(*args, **kwargs)
            finally:
                if end:
                    step(end)

        setattr(owner, name, marked)

    send = prepared._sent

    def on_the_wire(*args, **kwargs):
        sent[0] += 1
        number = sent[0]
        step(f"{side} sql {number} sent")
        try:
            return send(*args, **kwargs)
        finally:
            step(f"{side} sql {number} back")

    prepared._sent = on_the_wire
    if caller:
        publish = dispatch._send

        def published(message):
            mark(f"attempt {message.celery_id}")
            return publish(message)

        dispatch._send = published
        around(fused, "create", "creation sent", "creation answered")
        around(dispatch, "_send", "publish begun", "publish done")
        around(waiting, "_sleep_until_told", "wait sleeps", "wait heard")
        return
    around(tasks.WorkflowTask, "__call__", "task called")
    call = tasks.WorkflowTask.__call__

    def called(task, *args, **kwargs):
        attempt[0] = task.request.id  # before "task called" is marked
        return call(task, *args, **kwargs)

    tasks.WorkflowTask.__call__ = called
    around(fused, "claim", "claim sent", "claim answered")
    around(tasks, "_execution", None, "arguments ready")
    around(fused, "finish", "success sent")


def install_worker_marks():
    """Mark the worker's steps, when :data:`MARKS` is set (see ``apply_experiments``)."""
    prefix = os.environ.get(MARKS)
    if not prefix:
        return
    out = open(f"{prefix}.{os.getpid()}", "a", buffering=1)  # one per process

    def mark(label, attempt):
        out.write(f"{time.monotonic_ns()} {attempt} {label}\n")

    install_marks(mark, caller=False)


def main(runs=RUNS):
    """Print the median of each step over ``runs`` runs, in milliseconds."""
    marks = []

    def mark(label):
        marks.append((time.monotonic_ns(), label))

    install_marks(mark, caller=True)
    with tempfile.TemporaryDirectory(prefix="wtflow-steps-") as where:
        prefix = str(Path(where) / "worker")
        with bench_app() as app, Worker(env={MARKS: prefix}) as worker:
            worker.start(app.extensions["flask-celeryext"].celery)
            warm_up()
            truncate_runs()
            for path in Path(where).glob("worker.*"):
                path.write_text("")
            marks.clear()
            for _ in range(runs):
                mark("submit")
                workflow = Workflow.create("bench-one", start=True)
                mark("create returned")
                workflow.wait(timeout=60)
                mark("wait returned")
                db.session.remove()
        worker = []
        for path in Path(where).glob("worker.*"):
            for line in path.read_text().splitlines():
                stamp, attempt, label = line.split(" ", 2)
                worker.append((int(stamp), attempt, label))
    report(sorted(marks), worker, runs)


def report(marks, worker, runs):
    """Print each step's median time since the submit and since the step before.

    :param marks: the caller's ``(stamp, label)``, in order.
    :param worker: the worker's ``(stamp, celery id, label)``.
    """
    runs_made, by_attempt = [], {}
    run = None
    for stamp, label in marks:
        if label == "submit":
            run, start = {}, stamp
            runs_made.append(run)
        if run is None or label in run:
            continue  # before the first submit, or a label the run has already
        if label.startswith("attempt "):
            by_attempt[label.split(" ", 1)[1]] = (run, start)
            continue
        run[label] = (stamp - start) / 1e6
    for stamp, attempt, label in worker:
        if attempt in by_attempt:
            run, start = by_attempt[attempt]
            run.setdefault(label, (stamp - start) / 1e6)
    complete = [r for r in runs_made if "wait returned" in r]
    steps = sorted(
        {label for r in complete for label in r},
        key=lambda label: statistics.median(r[label] for r in complete if label in r),
    )
    print(f"{runs} one-task runs in sequence; median ms:")
    print(f"  {'step':<20} {'since submit':>12} {'since previous':>15}")
    previous = 0.0
    for label in steps:
        at = statistics.median(r[label] for r in complete if label in r)
        print(f"  {label:<20} {at:12.2f} {at - previous:15.2f}")
        previous = at


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
