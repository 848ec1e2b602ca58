# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Instructions per B3 run, counted by callgrind: the engine's own cost, unmoved by the machine.

On this machine B3 moves by more from one minute to the next than a change
to the engine's Python is worth, and CPU time too. Instructions do not:
valgrind's callgrind counts the instructions a process executes, the same
for the same code and inputs whatever else the machine does. This script
runs B3's one-task runs in one process (the attempt delivered by hand, as
:mod:`benchmarks.member_cpu` does: nothing is published) under callgrind,
and counts ``RUNS`` runs after a warm-up: the creation, the claim, the
body, the success and the wait for the creation's flush, with the
client's side of every statement (psycopg2, libpq), not the server's
(PostgreSQL runs in its own processes). With ``--against REV`` it counts
``REV``'s package too, checked out in a temporary git worktree, and prints
both and their ratio::

    python -m benchmarks.instructions [--against REV] [RUNS]

Hash seeds are fixed (``PYTHONHASHSEED=0``): two counts of the same tree
differ by less than 0.1%. Instructions are not time (a cache miss costs
more than an instruction, and the flow's caches are colder than a loop's),
but the engine's Python is most of what it does between two messages.
Needs valgrind (``callgrind_control`` too), and PostgreSQL and Redis as
every scenario does: the benchmark database is created again and Redis's
two benchmark databases flushed (see :func:`benchmarks.common.bench_app`),
so do not run it beside ``run.sh``. Both counts use this working tree's
``benchmarks`` and ``tests`` (the app and the tasks), so ``REV`` must be a
revision they still run with. Not run by ``run.sh``; nothing is written to
``results/``.
"""

import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .common import ROOT, bench_app, worktree

RUNS = 100

WARM_UP = 30
"""Runs before the count begins: imports, compiled statements, prepared plans."""


def runs_under_callgrind(runs):
    """The counted process: warm up, wait for the count, run ``runs`` runs, wait."""
    from celery import current_app as celery
    from invenio_db import db

    from invenio_wtflow import Workflow
    from invenio_wtflow.engine import dispatch

    from .member_cpu import drain

    with bench_app():
        sent = []
        dispatch._send = lambda message: sent.append(message) or True

        def run():
            Workflow.create("bench-one", start=True)
            db.session.remove()
            drain(celery, sent)

        for _ in range(WARM_UP):
            run()
        told("ready")
        for _ in range(runs):
            run()
        told("done")


def told(what):
    """Say ``what`` to the counting process; return when it answers."""
    print(what, flush=True)
    sys.stdin.readline()


def count(tree, runs):
    """Instructions per run of the package in ``tree``, counted by this tree's scripts.

    The counted process imports ``invenio_wtflow`` from ``tree`` and the
    benchmark and test scripts from this working tree, through a directory
    of links to both: the same harness counts both packages.
    """
    with tempfile.TemporaryDirectory(prefix="wtflow-callgrind-") as where:
        where = Path(where)
        for name, root in (
            ("invenio_wtflow", tree),
            ("benchmarks", ROOT),
            ("tests", ROOT),
        ):
            (where / name).symlink_to(Path(root) / name)
        out, log = where / "callgrind.out", where / "valgrind.log"
        with open(log, "w") as errors, subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--under-callgrind",
                str(runs),
            ],
            cwd=where,
            env=dict(
                os.environ,
                PYTHONPATH=str(where),
                PYTHONHASHSEED="0",
                PYTHONWARNINGS="ignore",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as process:
            stalled = threading.Timer(TIMEOUT, process.kill)  # ends the reads below
            stalled.start()
            try:
                for said, command in (("ready", "-i on"), ("done", "-d")):
                    answer(process, said, command, log)
                process.wait()
            finally:
                stalled.cancel()
                process.kill()
        dump = Path(f"{out}.1").read_text()
    return int(re.search(r"^summary: (\d+)$", dump, re.MULTILINE).group(1)) / runs


TIMEOUT = 900
"""Seconds the counted process may take in all before it is killed."""


def answer(process, said, command, log):
    """Wait until ``process`` says ``said``; run ``callgrind_control command``; go on.

    :param log: valgrind's and the process's errors, quoted if it ends first.
    """
    for line in process.stdout:
        if line.strip() == said:
            break
    else:
        raise RuntimeError(
            f"the counted process ended before saying {said!r}:\n"
            f"{log.read_text()[-3000:]}"
        )
    subprocess.run(
        ["callgrind_control", *command.split(), str(process.pid)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    process.stdin.write("\n")
    process.stdin.flush()


def main(arguments):
    """Count the working tree, and ``--against REV`` if given; print per run."""
    if arguments[:1] == ["--under-callgrind"]:
        return runs_under_callgrind(int(arguments[1]))
    against = None
    if arguments[:1] == ["--against"]:
        against, arguments = arguments[1], arguments[2:]
    runs = int(arguments[0]) if arguments else RUNS
    here = count(ROOT, runs)
    print(f"working tree: {here / 1e6:.3f} M instructions per run ({runs} runs)")
    if against is not None:
        with worktree(against) as tree:
            there = count(tree, runs)
        print(f"{against}: {there / 1e6:.3f} M instructions per run")
        print(f"working tree / {against}: {here / there:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
