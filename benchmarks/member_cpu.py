# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""CPU per task of a benchmark's tasks, in one process, without Celery's worker.

Runs the tasks of one scenario one after the other in this process, as a
worker would (``Task.apply`` with the engine's header: claim, body,
success), and prints the CPU and wall time per task:

- ``members`` (the default): B1's 1,000 group members
  (``bench-fan-in-1000``);
- ``one``: 200 one-task runs (B3's ``bench-one``), each created and started
  here, the creation timed apart from the task;
- ``chain``: the 200 tasks of B2's chain (``bench-chain-200``), one after
  the other, each receiving the previous result;
- ``children``: the 1,000 one-task children that B6's spawning task
  creates (``bench-spawn-many-1000``): each one's success finishes its run
  and tells the joining task.

No broker and no concurrency: it isolates the engine's own cost per task
from Celery's worker and from lock waits, so two versions of the package
can be compared run against run on a busy machine too.

``--profile`` adds a cProfile of the timed tasks (CPU time), cumulative and
internal, to the output. Not run by ``run.sh``::

    python -m benchmarks.member_cpu [members|one|chain|children] [--profile]
"""

import cProfile
import pstats
import sys
import time

from .common import bench_app

WIDTH = 1000
"""B1's group width and B6's number of children."""

RUNS = 200
"""One-task runs of the ``one`` shape."""


def deliver(celery, messages):
    """Run the published attempts in this process, in order."""
    from invenio_wtflow.engine import dispatch

    for message in messages:
        celery.tasks[message.name].apply(
            args=message.args,
            kwargs={},
            task_id=message.celery_id,
            headers=message.headers,
            retries=message.retries,
            throw=False,
        )


def drain(celery, sent):
    """Deliver what is published, and what that publishes, until nothing is left."""
    while sent:
        deliver(celery, take(sent))


class Meter:
    """CPU and wall time of the timed parts, optionally profiled."""

    def __init__(self, profile):
        """Start with nothing timed; ``profile`` adds a cProfile."""
        self.cpu = self.wall = 0.0
        self.profiler = cProfile.Profile(time.process_time) if profile else None

    def run(self, function, *args):
        """Call ``function`` and add its CPU and wall time."""
        cpu, wall = time.process_time(), time.perf_counter()
        if self.profiler:
            self.profiler.enable()
        function(*args)
        if self.profiler:
            self.profiler.disable()
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall

    def report(self, what, count):
        """Print the time per task, and the profile."""
        print(
            f"{count} {what}: CPU {1000 * self.cpu / count:.2f} ms per task, "
            f"wall {1000 * self.wall / count:.2f} ms per task",
            flush=True,
        )
        if self.profiler:
            stats = pstats.Stats(self.profiler)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)


def take(sent):
    """Return the messages published so far, and forget them."""
    batch = list(sent)
    sent.clear()
    return batch


def wave(celery, sent, meter, name, what, untimed=0):
    """Time one wave of tasks of ``<name>-1000``, after ``untimed`` waves.

    ``<name>-8`` runs first, untimed, to warm the code paths.
    """
    from invenio_wtflow import Workflow

    Workflow.create(f"{name}-8", start=True)
    drain(celery, sent)
    Workflow.create(f"{name}-1000", start=True)
    for _ in range(untimed):
        deliver(celery, take(sent))
    batch = take(sent)
    meter.run(deliver, celery, batch)
    meter.report(what, len(batch))


def members(celery, sent, meter):
    """B1's member tasks; the join is not timed."""
    wave(celery, sent, meter, "bench-fan-in", "members")


def one(celery, sent, meter):
    """B3's one-task runs; their creation is timed apart."""
    from invenio_db import db

    from invenio_wtflow import Workflow

    def create():
        Workflow.create("bench-one", start=True)
        db.session.remove()

    for _ in range(20):  # warm the code paths
        create()
        drain(celery, sent)
    creating = Meter(profile=False)
    for _ in range(RUNS):
        creating.run(create)
        meter.run(deliver, celery, take(sent))
    creating.report("creations (create and start, in the caller)", RUNS)
    meter.report("one-task runs (in the worker)", RUNS)


def chain(celery, sent, meter):
    """B2's chain of 200 tasks, after an untimed one."""
    from invenio_wtflow import Workflow

    for timed in (False, True):
        Workflow.create("bench-chain-200", start=True)
        while sent:
            batch = take(sent)
            if timed:
                meter.run(deliver, celery, batch)
            else:
                deliver(celery, batch)
    meter.report("chain tasks", 200)


def children(celery, sent, meter):
    """B6's children, after their spawning task (the join is not timed)."""
    wave(celery, sent, meter, "bench-spawn-many", "children", untimed=1)


SHAPES = {"members": members, "one": one, "chain": chain, "children": children}


def main(shape="members", profile=False):
    """Run a scenario's tasks in this process; print CPU and wall time per task."""
    from celery import current_app as celery

    from invenio_wtflow.engine import dispatch

    with bench_app():
        sent = []
        dispatch._send = lambda message: sent.append(message) or True
        SHAPES[shape](celery, sent, Meter(profile))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    shapes = [a for a in arguments if a in SHAPES]
    unknown = [a for a in arguments if a not in SHAPES and a != "--profile"]
    if unknown or len(shapes) > 1:
        sys.exit(
            f"usage: python -m benchmarks.member_cpu [{'|'.join(SHAPES)}] [--profile]"
        )
    main(*shapes[:1], profile="--profile" in arguments)
