# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""CPU per task of B1's members, in one process, without Celery's worker.

Creates B1's run (``bench-fan-in-1000``) and runs its 1,000 members one
after the other in this process, as a worker would (``Task.apply`` with the
engine's header: claim, body, success), and prints the CPU and wall time per
member. No broker and no concurrency: it isolates the engine's own cost per
task from Celery's worker and from lock waits, so two versions of the
package can be compared run against run on a busy machine too.

``--profile`` adds a cProfile of the members (CPU time), cumulative and
internal, to the output. Not run by ``run.sh``::

    python -m benchmarks.member_cpu [--profile]
"""

import cProfile
import pstats
import sys
import time

from .common import bench_app

WIDTH = 1000


def deliver(celery, messages):
    """Run the published attempts in this process, in order."""
    from invenio_wtflow.engine import dispatch

    for message in messages:
        celery.tasks[message.name].apply(
            args=message.args,
            kwargs={},
            task_id=message.celery_id,
            headers={dispatch.HEADER: message.task_run_id},
            retries=message.retries,
            throw=False,
        )


def main(profile=False):
    """Run B1's members in this process; print CPU and wall time per member."""
    from celery import current_app as celery

    from invenio_wtflow import Workflow
    from invenio_wtflow.engine import dispatch

    with bench_app():
        sent = []
        dispatch._send = lambda message: sent.append(message) or True
        Workflow.create("bench-fan-in-8", start=True)  # warm the code paths
        while sent:
            batch = list(sent)
            sent.clear()
            deliver(celery, batch)
        Workflow.create("bench-fan-in-1000", start=True)
        members = list(sent)
        sent.clear()
        profiler = cProfile.Profile(time.process_time) if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        deliver(celery, members)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"{len(members)} members: CPU {1000 * cpu / len(members):.2f} ms "
            f"per task, wall {1000 * wall / len(members):.2f} ms per task",
            flush=True,
        )
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main(profile="--profile" in sys.argv[1:])
