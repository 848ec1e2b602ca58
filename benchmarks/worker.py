# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Celery app of the benchmark worker (``celery -A benchmarks.worker:celery worker``).

Both sides run on this worker. Two optional hooks, off unless asked for, act
in every pool process (``worker_process_init``):

* ``WTFLOW_BENCH_COUNT_DIR``: count SQL statements (by kind), commits and
  published messages with SQLAlchemy and Celery events, and the engine tasks
  run; write them to ``<dir>/<pid>.json`` after every task.
* ``WTFLOW_BENCH_PROFILE_DIR``: profile every engine task execution (from
  ``task_prerun`` to ``task_postrun``) with cProfile; dump ``<dir>/<pid>.prof``.
"""

import cProfile
import json
import os
from pathlib import Path

from celery.signals import (
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
)

from .common import SQLCounter, create_app

app = create_app()
celery = app.extensions["flask-celeryext"].celery

COUNT_DIR = os.environ.get("WTFLOW_BENCH_COUNT_DIR")
PROFILE_DIR = os.environ.get("WTFLOW_BENCH_PROFILE_DIR")

_state = {}


def _is_engine_task(task):
    headers = task.request.headers or {}
    return "wtflow_task" in headers or getattr(task.request, "wtflow_task", None)


if COUNT_DIR:

    @worker_process_init.connect
    def _start_counting(**kwargs):
        from invenio_db import db

        with app.app_context():
            _state["sql"] = SQLCounter(db.engine)
        _state["published"] = 0
        _state["tasks"] = 0

    @before_task_publish.connect
    def _count_publish(**kwargs):
        if "sql" in _state:
            _state["published"] += 1

    @task_postrun.connect
    def _write_counts(task=None, **kwargs):
        if "sql" not in _state:
            return
        if _is_engine_task(task):
            _state["tasks"] += 1
        counts = dict(
            _state["sql"].snapshot(),
            published=_state["published"],
            tasks=_state["tasks"],
        )
        path = Path(COUNT_DIR) / f"{os.getpid()}.json"
        path.write_text(json.dumps(counts))


if PROFILE_DIR:

    def _dump():
        profile = _state.get("profile")
        if profile is not None:
            profile.dump_stats(str(Path(PROFILE_DIR) / f"{os.getpid()}.prof"))

    @worker_process_init.connect
    def _start_profiling(**kwargs):
        _state["profile"] = cProfile.Profile()
        _state["profiled"] = 0

    @task_prerun.connect
    def _enable(task=None, **kwargs):
        if _is_engine_task(task):
            _state["profile"].enable()

    @task_postrun.connect
    def _disable(task=None, **kwargs):
        if not _is_engine_task(task):
            return
        _state["profile"].disable()
        _state["profiled"] += 1
        if _state["profiled"] % 100 == 0:
            _dump()

    @worker_process_shutdown.connect
    def _stop_profiling(**kwargs):
        _dump()
