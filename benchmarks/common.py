# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Shared helpers of the benchmarks: app, database, worker, timing and statistics."""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
"""The repository (the working directory of the worker)."""

PG_URL = os.environ.get(
    "WTFLOW_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432"
)
"""PostgreSQL server, without a database name, as this process (the caller,
in the place of the web application) reaches it: psycopg2, Invenio's driver."""

WORKER_DRIVER = os.environ.get("WTFLOW_BENCH_WORKER_DRIVER", "psycopg2")
"""PostgreSQL driver of the worker's processes: ``psycopg2`` (the default,
Invenio's) or ``psycopg`` (psycopg 3). :meth:`Worker.start` checks that the
worker uses it."""

DB_NAME = os.environ.get("WTFLOW_BENCH_DB", "wtflow_bench")
"""The database the benchmarks create and drop (nothing else is touched)."""

DB_URI = f"{PG_URL}/{DB_NAME}"

REDIS_URL = os.environ.get("WTFLOW_BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER_URL = f"{REDIS_URL}/{os.environ.get('WTFLOW_BENCH_BROKER_DB', '11')}"
"""Broker of both sides (Redis database 11, or ``WTFLOW_BENCH_BROKER_DB``;
flushed by the benchmarks)."""

BACKEND_URL = f"{REDIS_URL}/{os.environ.get('WTFLOW_BENCH_BACKEND_DB', '12')}"
"""Result backend of both sides (Redis database 12, or
``WTFLOW_BENCH_BACKEND_DB``; flushed by the benchmarks)."""

PAIRS = int(os.environ.get("WTFLOW_BENCH_PAIRS", "3"))
"""A/B pairs per scenario (at least 3)."""

B3_PAIRS = int(os.environ.get("WTFLOW_BENCH_B3_PAIRS", "12"))
"""B3's pairs, their order reversed every other pair (before the twentieth
session: ``PAIRS``, always in the same order). Keep it even: each order then
runs as often, and a side that runs second in a pair does so in half of
them."""

CONCURRENCY = int(os.environ.get("WTFLOW_BENCH_CONCURRENCY", "4"))
"""Prefork worker processes (the same for both sides)."""

POLL = 0.02
"""Seconds between two reads of a run's status while waiting for it."""

TERMINAL = ("success", "failure", "cancelled")

EXPERIMENTS = frozenset(
    filter(None, os.environ.get("WTFLOW_BENCH_EXPERIMENTS", "").split(","))
)
"""Package changes to try without editing the package (off by default).

``continuum-subquery``: version ``TaskRun`` and ``WorkflowRun`` with
SQLAlchemy-Continuum's ``subquery`` strategy instead of ``validity`` (no
read and update of the previous version row on every change).
``no-savepoint``: the engine's transactions (``orchestrator.atomic``) use a
unit of work that does not open a ``SAVEPOINT`` (invenio-db's ``UnitOfWork``
calls ``begin_nested()``, and Continuum's version session then opens a
second one).
``ignore-result``: the engine's no-op tasks do not write the result backend.
Set in the environment, it applies to the worker and the caller alike.
The package itself does all three since 2026-11-23 (``subquery`` versioning,
``EngineUnitOfWork``, attempts published with ``ignore_result``): on it, the
experiments change nothing; they are kept to measure older trees.
``flushed-claim`` (2026-12-06): ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = True``,
every claim waiting for PostgreSQL to flush it before the body runs: the
package's default until the twenty-second session. Since then the claim
commits unflushed by default (a run's first attempts, published before the
creation's flush, only once everything before them is flushed), and
``async-claim``, the experiment that tried it (2026-12-05 to 2026-12-06),
changes nothing (see benchmarks/README.md, eighteenth to twenty-second
sessions).
"""

WTFLOW_TABLES = (
    "wtflow_task_dependency",
    "wtflow_task_version",
    "wtflow_workflow_version",
    "wtflow_task",
    "wtflow_workflow",
    "transaction",
)


#
# Application and database
#
def app_config(**config):
    """Configuration of the benchmark app and worker (PostgreSQL, Redis)."""
    from .bench_tasks import WORKFLOWS

    return dict(
        {
            "SQLALCHEMY_DATABASE_URI": DB_URI,
            "CELERY_TASK_ALWAYS_EAGER": False,
            "CELERY_BROKER_URL": BROKER_URL,
            "CELERY_RESULT_BACKEND": BACKEND_URL,
            "CELERY_TASK_ACKS_LATE": True,
            "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
            "WTFLOW_WORKFLOWS": WORKFLOWS,
            **(
                {"WTFLOW_CLAIM_SYNCHRONOUS_COMMIT": True}
                if "flushed-claim" in EXPERIMENTS
                else {}
            ),
        },
        **config,
    )


def apply_experiments():
    """Apply the :data:`EXPERIMENTS` asked for (before the app is created)."""
    from .b3_steps import install_worker_marks

    install_worker_marks()  # only in b3_steps's worker
    if "continuum-subquery" in EXPERIMENTS:
        from invenio_wtflow.models import TaskRun, WorkflowRun

        for model in (TaskRun, WorkflowRun):
            model.__versioned__ = {**model.__versioned__, "strategy": "subquery"}
    if "no-savepoint" in EXPERIMENTS:
        from invenio_db.uow import UnitOfWork

        from invenio_wtflow.engine import orchestrator

        class TopLevelUnitOfWork(UnitOfWork):
            """A unit of work that runs in the session's own transaction."""

            def __enter__(self):
                return self

        orchestrator.UnitOfWork = TopLevelUnitOfWork


def create_app(**config):
    """Create the light test app on the benchmark database and Redis."""
    from tests.app import create_test_app

    apply_experiments()

    from . import bench_tasks  # noqa: F401 - registers the tasks

    return create_test_app(**app_config(**config))


def reset_database():
    """Drop and create the benchmark database, then its tables."""
    admin = sa.create_engine(f"{PG_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()


def drop_database():
    """Drop the benchmark database."""
    admin = sa.create_engine(f"{PG_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    admin.dispose()


def create_tables(app):
    """Create every table of the app (invenio-db models and versions)."""
    from invenio_db import db

    with app.app_context():
        sa.orm.configure_mappers()
        db.create_all()
        db.session.remove()


def flush_redis():
    """Empty the broker and result backend databases only."""
    import redis

    for url in (BROKER_URL, BACKEND_URL):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


def flush_backend():
    """Empty the result backend database only."""
    import redis

    client = redis.Redis.from_url(BACKEND_URL)
    client.flushdb()
    client.close()


def truncate_runs():
    """Delete every run, task, edge and version (outside any timing)."""
    from invenio_db import db

    db.session.remove()
    db.session.execute(sa.text(f"TRUNCATE {', '.join(WTFLOW_TABLES)} CASCADE"))
    db.session.commit()


_load = {}


@contextmanager
def bench_app(**config):
    """A fresh database and Redis, and an app context on them."""
    _load.setdefault("start", os.getloadavg())
    flush_redis()
    reset_database()
    app = create_app(**config)
    create_tables(app)
    with app.app_context():
        yield app


#
# Worker
#
def worker_url():
    """:data:`PG_URL` through the worker's driver (:data:`WORKER_DRIVER`)."""
    url = sa.engine.make_url(PG_URL).set(drivername=f"postgresql+{WORKER_DRIVER}")
    return url.render_as_string(hide_password=False)


class Worker:
    """A prefork Celery worker on the benchmark app, in its own process."""

    def __init__(self, concurrency=CONCURRENCY, env=None, name="bench"):
        """Prepare (not start) a worker with ``concurrency`` processes."""
        self.concurrency = concurrency
        self.env = env or {}
        self.name = name
        self.proc = None
        self.log = Path(tempfile.mkdtemp(prefix="wtflow-bench-")) / "worker.log"

    def command(self):
        """The command line, the same for both sides."""
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.worker:celery",
            "worker",
            "--pool=prefork",
            f"--concurrency={self.concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--prefetch-multiplier=1",
            "-n",
            f"wtflow-{self.name}-{os.getpid()}@%h",
        ]

    def start(self, celery):
        """Start the worker and wait until it answers a ping."""
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            WTFLOW_BENCH_PG=worker_url(),
            **self.env,
        )
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while not celery.control.ping(timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(
                    f"worker did not start:\n{self.log.read_text()[-3000:]}"
                )
        self.check_driver()
        return self

    def check_driver(self):
        """Make sure the worker's connections use :data:`WORKER_DRIVER`."""
        from .bench_tasks import database_driver

        answer = self.log.with_name("driver")
        database_driver.delay(str(answer))
        deadline = time.monotonic() + 60
        while not answer.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        used = answer.read_text() if answer.exists() else "no answer"
        if used != WORKER_DRIVER:
            self.stop()
            raise RuntimeError(f"the worker uses {used}, not {WORKER_DRIVER}")

    def stop(self):
        """Warm shutdown (children finish and exit), kill after 60 s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def children(self):
        """Process ids of the pool processes."""
        pid = self.proc.pid
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(c) for c in text)
        return sorted(found)

    def cpu(self):
        """CPU seconds used so far by the main and the pool processes."""
        return sum(cpu_seconds(p) for p in [self.proc.pid, *self.children()])

    def rss(self):
        """RSS in MiB: ``{"main": x, "children": [..]}``."""
        return {
            "main": rss_mib(self.proc.pid),
            "children": [rss_mib(c) for c in self.children()],
        }

    def __enter__(self):
        """Nothing: start it with :meth:`start`."""
        return self

    def __exit__(self, *exc):
        """Stop it."""
        self.stop()


def cpu_seconds(pid):
    """User + system CPU seconds of a process (from ``/proc``), 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu():
    """CPU seconds of each PostgreSQL backend connected to the benchmark db."""
    query = sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db")
    with poll_engine().connect() as conn:
        pids = conn.execute(query, {"db": DB_NAME}).scalars().all()
    return {pid: cpu_seconds(pid) for pid in pids}


class CPUMeter:
    """CPU seconds a run costs: worker, PostgreSQL backends, this process.

    CPU time, unlike elapsed time, hardly changes when other work shares
    the machine, so it compares the two sides more steadily.
    """

    def __init__(self, worker=None):
        """Measure ``worker`` (a started :class:`Worker`), if any."""
        self.worker = worker

    def read(self):
        """Cumulative counters now."""
        return {
            "worker": self.worker.cpu() if self.worker else 0.0,
            "postgres": postgres_cpu(),
            "caller": time.process_time(),
        }

    @staticmethod
    def delta(before, after):
        """CPU seconds between two readings, by part and in total."""
        pg = sum(
            v - before["postgres"].get(k, 0.0) for k, v in after["postgres"].items()
        )
        used = {
            "worker": after["worker"] - before["worker"],
            "postgres": pg,
            "caller": after["caller"] - before["caller"],
        }
        used["total"] = sum(used.values())
        return used


def rss_mib(pid):
    """Resident set size of a process, in MiB (from ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


#
# Running workflows
#
_poll_engine = None


def poll_engine():
    """An autocommit engine to read statuses without holding a transaction."""
    global _poll_engine
    if _poll_engine is None:
        _poll_engine = sa.create_engine(DB_URI, isolation_level="AUTOCOMMIT")
    return _poll_engine


def wait_workflow(workflow_id, timeout=900):
    """Poll a run's status every :data:`POLL` seconds until it is terminal."""
    query = sa.text("SELECT status FROM wtflow_workflow WHERE id = :id")
    deadline = time.monotonic() + timeout
    with poll_engine().connect() as conn:
        while True:
            status = conn.execute(query, {"id": str(workflow_id)}).scalar()
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {workflow_id} still {status}")
            time.sleep(POLL)


def run_workflow(name, data=None):
    """Create, start and wait for a run; return seconds from create to success."""
    from invenio_db import db

    from invenio_wtflow import Workflow

    start = time.perf_counter()
    workflow = Workflow.create(name, data=data, start=True)
    workflow_id = workflow.id
    db.session.remove()
    status = wait_workflow(workflow_id)
    elapsed = time.perf_counter() - start
    if status != "success":
        raise RuntimeError(f"run {workflow_id} of {name} ended {status}")
    return elapsed


def warm_up(rounds=2):
    """Run a small fan-in on both sides so every pool process is warm."""
    from .bench_tasks import fan_in, plain_join, plain_noop

    for _ in range(rounds):
        run_workflow("bench-fan-in-8")
        run_canvas(fan_in(plain_noop, plain_join, 8))


def run_canvas(canvas, timeout=900, follow_parents=True):
    """Apply a plain Celery canvas and wait for its result; return seconds.

    ``get()`` is woken by the Redis result backend when a message arrives
    on a channel the caller subscribed to (its ``interval`` is only used by
    polling backends). After each message, ``follow_parents`` makes it look
    at every unfinished parent for an error, one Redis ``GET`` each.

    :param follow_parents: ``False`` for a chord: the caller subscribed to
        each member at the send, so every member's result wakes ``get()``,
        and looking at 1,000 members after each of 1,000 messages made the
        caller use up to 11 s of CPU and the run last 3.4-14 s instead of
        1.2-1.6 s, at random (2026-12-05, ninth session). A member's failure
        still reaches the chord's result (``ChordError``), so nothing is
        lost. A chain needs it: its last result never arrives when a task
        before it fails.
    """
    start = time.perf_counter()
    canvas.apply_async().get(timeout=timeout, follow_parents=follow_parents)
    return time.perf_counter() - start


#
# Statistics and results
#
def alternate(run_a, run_b, pairs=PAIRS, between=None, meter=None, cpu=None):
    """Run A then B, ``pairs`` times; return ``[(a, b), ...]``.

    :param between: called (untimed) before every run, with "a" or "b".
    :param meter: a :class:`CPUMeter`; each run's CPU use is appended to
        ``cpu`` as a pair ``(a, b)`` of :meth:`CPUMeter.delta` dictionaries.
    """
    results = []
    for i in range(pairs):
        values, used = [], []
        for side, run in (("a", run_a), ("b", run_b)):
            if between is not None:
                between(side)
            before = meter.read() if meter else None
            values.append(run())
            if meter:
                used.append(meter.delta(before, meter.read()))
        results.append(tuple(values))
        if meter:
            cpu.append(tuple(used))
        line = f"  pair {i + 1}: A={values[0]:.4g} B={values[1]:.4g}"
        if meter:
            line += f" (CPU s: A={used[0]['total']:.3g} B={used[1]['total']:.3g})"
        print(line, flush=True)
    return results


def compare_cpu(cpu):
    """Summarise the CPU pairs of :func:`alternate`: seconds by part, ratio."""
    parts = ("worker", "postgres", "caller", "total")
    ratios = [a["total"] / b["total"] for a, b in cpu]
    return {
        "engine": {p: describe([a[p] for a, _ in cpu]) for p in parts},
        "baseline": {p: describe([b[p] for _, b in cpu]) for p in parts},
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
    }


def describe(values):
    """Min, median and every value of a series."""
    return {
        "min": min(values),
        "median": statistics.median(values),
        "values": list(values),
    }


def percentile(values, q):
    """Return the nearest-rank value at ``q`` percent of a series."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def compare(pairs):
    """Summarise A/B pairs: each side's min/median and the ratio A/B per pair."""
    ratios = [a / b for a, b in pairs]
    return {
        "engine": describe([a for a, _ in pairs]),
        "baseline": describe([b for _, b in pairs]),
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
    }


@contextmanager
def worktree(rev):
    """Check ``rev`` out in a temporary git worktree; yield its path, then remove it."""
    with tempfile.TemporaryDirectory(prefix="wtflow-tree-") as where:
        tree = Path(where) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), rev],
            cwd=ROOT,
            check=True,
        )
        try:
            yield tree
        finally:  # a failure here must not hide the block's own
            removed = subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT
            )
            if removed.returncode:
                print(f"could not remove the worktree {tree}", file=sys.stderr)


def parts_dir():
    """Where scenario scripts write their result (``WTFLOW_BENCH_PARTS``)."""
    path = Path(
        os.environ.get("WTFLOW_BENCH_PARTS", ROOT / "benchmarks" / "results" / "parts")
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_result(result):
    """Write a scenario's result as JSON for ``report.py`` and print it."""
    result["loadavg"] = {"start": _load.get("start"), "end": os.getloadavg()}
    result["experiments"] = sorted(EXPERIMENTS)
    path = parts_dir() / f"{result['id']}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str), flush=True)
    return path


#
# Counting SQL statements
#
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def statement_kind(statement):
    """``"SELECT wtflow_task"``, ``"SELECT FOR UPDATE wtflow_task"``, ..."""
    text = statement.lstrip()
    verb = text.split(None, 1)[0].upper() if text else "?"
    if verb in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
        return verb
    match = _TABLE.search(text)
    table = match.group(1) if match else "?"
    if verb == "SELECT" and "FOR UPDATE" in text.upper():
        verb = "SELECT FOR UPDATE"
    return f"{verb} {table}"


class SQLCounter:
    """Count statements (by kind), commits and rollbacks on an engine."""

    def __init__(self, engine):
        """Listen to ``engine`` until :meth:`close`."""
        self.engine = engine
        self.kinds = Counter()
        self.statements = 0
        self.commits = 0
        self.rollbacks = 0
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "rollback", self._rollback)

    def _statement(self, conn, cursor, statement, *args):
        self.statements += 1
        self.kinds[statement_kind(statement)] += 1

    def _commit(self, conn):
        self.commits += 1

    def _rollback(self, conn):
        self.rollbacks += 1

    def snapshot(self):
        """The counts so far, as a dictionary."""
        return {
            "statements": self.statements,
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "kinds": dict(self.kinds),
        }

    def close(self):
        """Stop listening."""
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "rollback", self._rollback)


@contextmanager
def count_sql(engine):
    """Count statements and commits on ``engine`` inside the block."""
    counter = SQLCounter(engine)
    try:
        yield counter
    finally:
        counter.close()


def machine():
    """What the figures were measured on."""
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (OSError, ValueError):
        pass
    return info


if __name__ == "__main__":
    if sys.argv[1:] == ["drop"]:
        drop_database()
        flush_redis()
    else:
        sys.exit("usage: python -m benchmarks.common drop")
