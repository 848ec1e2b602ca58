# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B3 in short interleaved blocks: the engine, a variant of it and plain Celery, at one moment.

:mod:`benchmarks.b3_latency` and :mod:`benchmarks.b3_floor` switch sides
every 200 runs (B3 reverses their order every other pair since the
twentieth session; B3-floor keeps one order); on a machine whose speed
drifts from one minute to the next, a side's second or two can land on a
slow stretch (benchmarks/README.md, nineteenth and twentieth sessions).
This script runs blocks of :data:`PER_BLOCK` runs of
each side in turn, reverses the order every other block, drops the first
:data:`WARM` runs of each block, and reports per side the median of the
blocks' p50s, each engine side's ratio to plain Celery (median of the
blocks' ratios), and how often and by how much the variant beat the
engine, block by block.

The variant, if any, is one of:

- ``--setting NAME=VALUE``: a setting of this process (the caller, in
  the place of the web application) changed for the variant's blocks; the
  value is read as JSON when it can be (``false``, ``3``), else as text;
- ``--worker EXPERIMENTS``: a second worker, started with
  ``WTFLOW_BENCH_EXPERIMENTS=EXPERIMENTS`` (see :mod:`benchmarks.common`),
  consumes a queue of its own, to which a copy of ``bench-one`` routes its
  task: for what the worker reads, as ``flushed-claim`` (the claim with
  its flush). Both workers have the same processes and command line.

Without a variant it compares the engine with plain Celery alone: B3's
ratio measured by blocks. Nothing is written to ``results/``; not run by
``run.sh``::

    python -m benchmarks.b3_blocks [--blocks 40] [--setting NAME=VALUE | --worker EXPERIMENTS]
"""

import argparse
import json
import statistics
import time
from contextlib import ExitStack

from invenio_db import db

from invenio_wtflow import Workflow, current_wtflow

from .bench_tasks import plain_noop, wf_noop
from .common import Worker, bench_app, truncate_runs, warm_up

PER_BLOCK = 30
"""Runs of each side per block, after the warm ones."""

WARM = 3
"""Runs dropped at the start of each block."""

VARIANT_QUEUE = "wtflow_bench_variant"
"""The queue of the second worker (``--worker``)."""


class _QueueWorker(Worker):
    """A benchmark worker that consumes :data:`VARIANT_QUEUE` only.

    Its :meth:`~benchmarks.common.Worker.start` returns once any worker
    answers a ping (the first one does): the variant's warm block, whose
    runs wait for it, is what waits until it consumes.
    """

    def command(self):
        """The usual command line, on the variant's queue."""
        return [*super().command(), "-Q", VARIANT_QUEUE]


def _value(text):
    """A setting's value: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _block(run):
    """The p50, in ms, of one block of ``run()`` calls, the warm ones dropped."""
    times = []
    for i in range(WARM + PER_BLOCK):
        start = time.perf_counter()
        run()
        if i >= WARM:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _engine(name):
    """One run of definition ``name``: created, started and waited for."""

    def run():
        assert Workflow.create(name, start=True).wait(timeout=60).status == "success"
        db.session.remove()

    return run


def _celery():
    """One plain Celery call: B3's baseline."""
    plain_noop.apply_async().get(timeout=60)


def main(argv=None):
    """Run the blocks and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--setting", metavar="NAME=VALUE")
    variant.add_argument("--worker", metavar="EXPERIMENTS")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        app = stack.enter_context(bench_app())
        celery = app.extensions["flask-celeryext"].celery
        stack.enter_context(Worker()).start(celery)
        sides = {"engine": _engine("bench-one"), "celery": _celery}
        if args.setting:
            name, _, text = args.setting.partition("=")
            if name not in app.config:
                parser.error(f"--setting: the application has no setting {name!r}")
            changed, usual = _value(text), app.config[name]
            engine = sides["engine"]

            def with_setting():
                app.config[name] = changed
                try:
                    engine()
                finally:
                    app.config[name] = usual

            sides["variant"] = with_setting
        elif args.worker:
            env = {"WTFLOW_BENCH_EXPERIMENTS": args.worker}
            stack.enter_context(_QueueWorker(env=env, name="variant")).start(celery)
            current_wtflow.register(
                "bench-one-variant", wf_noop.si().set(queue=VARIANT_QUEUE)
            )
            sides["variant"] = _engine("bench-one-variant")
        warm_up()
        truncate_runs()
        for run in sides.values():
            _block(run)  # the variant's worker and definition warmed too
        p50s = {side: [] for side in sides}
        for block in range(args.blocks):
            order = list(sides) if block % 2 == 0 else list(reversed(sides))
            for side in order:
                p50s[side].append(_block(sides[side]))
    report(p50s, args)


def report(p50s, args):
    """Print each side's median p50, the ratios to plain Celery, the variant's gain."""
    print(f"{args.blocks} blocks of {PER_BLOCK} runs per side ({WARM} more dropped)")
    for side, values in p50s.items():
        line = f"  {side:<8} median p50 {statistics.median(values):6.2f} ms"
        if side != "celery":
            ratios = [v / c for v, c in zip(values, p50s["celery"])]
            line += f"   /celery {statistics.median(ratios):.3f}"
        print(line)
    if "variant" in p50s:
        gains = [e - v for e, v in zip(p50s["engine"], p50s["variant"])]
        print(
            f"  variant faster in {sum(g > 0 for g in gains)} of {len(gains)} blocks, "
            f"by {statistics.median(gains):.3f} ms (median of the blocks' differences)"
        )


if __name__ == "__main__":
    main()
