# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B3 on two trees of the package, alternated: a change measured, not the machine.

This machine changes speed from one minute to the next (the same tree's B3
moved by a millisecond between runs), so two runs of ``run.sh`` minutes
apart cannot tell a change from the weather. This script checks ``REV``
out in a temporary git worktree and runs :mod:`benchmarks.b3_floor` on
that tree and on the working tree in turn, ``ROUNDS`` times, each in a
process of its own (its own database, worker and schema). Each run's
floor and plain Celery serve as the yardstick of the moment: the script
reports, per run, the engine's p50 over the floor's and over the
baseline's, and the median of each per tree::

    python -m benchmarks.compare_trees 0dde5d4 [ROUNDS]

Nothing is written to ``results/``; the printed table is the result.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import ROOT, worktree

PAIRS = "2"
"""Engine/floor/baseline rounds per run of ``b3_floor`` (each of 200 runs)."""


def b3_floor(tree):
    """Run ``b3_floor`` on the package in ``tree``; return its rounds' p50s."""
    with tempfile.TemporaryDirectory(prefix="wtflow-compare-") as parts:
        env = dict(
            os.environ,
            PYTHONPATH=str(tree),
            WTFLOW_BENCH_PAIRS=PAIRS,
            WTFLOW_BENCH_PARTS=parts,
            PYTHONWARNINGS="ignore",
        )
        subprocess.run(
            [sys.executable, "-m", "benchmarks.b3_floor"],
            cwd=tree,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        result = json.loads((Path(parts) / "B3-floor.json").read_text())
    engine = result["engine"]["values"]
    baseline = result["baseline"]["values"]
    floor = result["extra"]["floor_p50_ms"]["values"]
    return list(zip(engine, floor, baseline))


def main(rev, rounds=3):
    """Alternate ``rev`` and the working tree ``rounds`` times; print the ratios."""
    with worktree(rev) as old:
        trees = {rev: old, "working tree": ROOT}
        ratios = {name: {"floor": [], "baseline": []} for name in trees}
        print(
            "| tree | engine p50 ms | floor | baseline | engine/floor | engine/baseline |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for _ in range(rounds):
            for name, tree in trees.items():
                for engine, floor, baseline in b3_floor(tree):
                    ratios[name]["floor"].append(engine / floor)
                    ratios[name]["baseline"].append(engine / baseline)
                    print(
                        f"| {name} | {engine:.2f} | {floor:.2f} | {baseline:.2f} "
                        f"| {engine / floor:.2f} | {engine / baseline:.2f} |",
                        flush=True,
                    )
        for name, by in ratios.items():
            print(
                f"{name}: median engine/floor "
                f"{statistics.median(by['floor']):.2f}, engine/baseline "
                f"{statistics.median(by['baseline']):.2f} "
                f"({len(by['floor'])} rounds)"
            )


if __name__ == "__main__":
    main(sys.argv[1], *(int(arg) for arg in sys.argv[2:3]))
