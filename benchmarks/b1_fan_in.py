# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""B1: 1,000 tasks in a group then one join, engine vs plain Celery ``chord``."""

from .bench_tasks import fan_in, plain_join, plain_noop
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

WIDTH = 1000


def main():
    """Alternate the engine and plain Celery on the same 4-process worker."""
    with bench_app() as app, Worker() as worker:
        worker.start(app.extensions["flask-celeryext"].celery)
        warm_up()

        def between(side):
            truncate_runs() if side == "a" else flush_backend()

        cpu = []
        pairs = alternate(
            lambda: run_workflow("bench-fan-in-1000"),
            lambda: run_canvas(
                fan_in(plain_noop, plain_join, WIDTH), follow_parents=False
            ),
            between=between,
            meter=CPUMeter(worker),
            cpu=cpu,
        )
    result = {
        "id": "B1",
        "scenario": f"fan-out/fan-in: {WIDTH} no-op tasks in a group, then a join",
        "against": "plain Celery chord(group(...), join), Redis result backend",
        "workers": CONCURRENCY,
        "unit": "s",
        "target": "median ratio <= 1.5",
    }
    result.update(compare(pairs))
    result["cpu"] = compare_cpu(cpu)
    result["met"] = result["ratio_median"] <= 1.5
    result["tasks_per_second"] = {
        "engine": (WIDTH + 1) / result["engine"]["median"],
        "baseline": (WIDTH + 1) / result["baseline"]["median"],
    }
    write_result(result)


if __name__ == "__main__":
    main()
