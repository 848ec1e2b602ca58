# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B2: a chain of 200 no-op tasks, engine vs plain Celery ``chain``."""

from .bench_tasks import long_chain, plain_noop
from .common import (
    CONCURRENCY,
    CPUMeter,
    Worker,
    alternate,
    bench_app,
    compare,
    compare_cpu,
    flush_backend,
    run_canvas,
    run_workflow,
    truncate_runs,
    warm_up,
    write_result,
)

LENGTH = 200


def main():
    """Alternate the engine and plain Celery on the same worker."""
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()

        def between(side):
            truncate_runs() if side == "a" else flush_backend()

        cpu = []
        pairs = alternate(
            lambda: run_workflow("bench-chain-200"),
            lambda: run_canvas(long_chain(plain_noop, LENGTH)),
            between=between,
            meter=CPUMeter(worker),
            cpu=cpu,
        )
    result = {
        "id": "B2",
        "scenario": f"chain of {LENGTH} no-op tasks (each receives the previous result)",
        "against": "plain Celery chain(...), Redis result backend",
        "workers": CONCURRENCY,
        "unit": "s",
        "target": "median ratio <= 1.5",
    }
    result.update(compare(pairs))
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 1.5
    result["ms_per_task"] = {
        "engine": 1000 * result["engine"]["median"] / LENGTH,
        "baseline": 1000 * result["baseline"]["median"] / LENGTH,
    }
    write_result(result)


if __name__ == "__main__":
    main()
