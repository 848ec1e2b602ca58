# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""What the parts of the engine's hot statements cost PostgreSQL, against the floor's.

B3's floor (see :mod:`benchmarks.b3_floor`) creates, claims and finishes a
run with one plain statement each; the engine's statements also version
the rows, read what the attempt needs, derive the run's status and notify.
This script measures the difference statement by statement, without Celery
and without the engine's Python:

1. it runs one ``bench-one`` run in this process (the attempt delivered by
   hand, as :mod:`benchmarks.member_cpu` does) and keeps the messages the
   engine sent for the creation, the claim and the success, with their
   parameters;
2. it prepares each of those statements with its parameters written in,
   and variants of them: without Continuum's transaction row and version
   copies, the creation of the run's row alone, the claim without its
   reads, the success without the root's lock, the dependants' release or
   the run's update, and the floor's statements on the same row (a
   creation's rows are deleted again before each try);
3. it sends each variant as the engine does (one message, autocommit, on
   one psycopg2 connection), resetting the row before each try in a
   message of its own (committed without waiting for the flush), in
   interleaved blocks; then each again with ``synchronous_commit = off``,
   which leaves out the commit's WAL flush.

It prints the median round trip of each, as the client sees it (the
statement, its commit and the answer). A diagnostic, not a scenario (not
run by ``run.sh``)::

    python -m benchmarks.statement_costs [tries per variant]
"""

import re
import statistics
import sys
import time
from contextlib import contextmanager

from .b3_floor import _connect
from .common import bench_app

TRIES = 1000
"""Tries per variant and commit mode, in blocks of :data:`BLOCK`."""

BLOCK = 50

ASYNC = "SET LOCAL synchronous_commit = off; "

_POSITION = re.compile(r"\$(\d+)")


@contextmanager
def recorded_messages():
    """Record ``(plans, messages)`` the engine sends on the driver's cursor."""
    from invenio_wtflow.engine import prepared

    plans, messages = {}, []
    prepare, send = prepared._prepared, prepared._sent

    def recording_prepare(statement, dialect):
        plan = prepare(statement, dialect)
        plans[plan.name] = plan
        return plan

    def recording_send(connection, sql, values):
        messages.append((sql, dict(values)))
        return send(connection, sql, values)

    prepared._prepared, prepared._sent = recording_prepare, recording_send
    try:
        yield plans, messages
    finally:
        prepared._prepared, prepared._sent = prepare, send


def one_run():
    """Create, claim and finish one ``bench-one`` run; return its ids and messages.

    :returns: the attempt's message, the run's id, the plans by name, and
        the creation's, the claim's and the success's messages.
    """
    from celery import current_app as celery
    from invenio_db import db

    from invenio_wtflow import Workflow
    from invenio_wtflow.engine import dispatch

    from .member_cpu import deliver

    sent, send = [], dispatch._send
    dispatch._send = lambda message: sent.append(message) or True
    try:
        with recorded_messages() as (plans, messages):
            workflow = Workflow.create("bench-one", start=True)
            workflow_id = workflow.id
            db.session.remove()
            deliver(celery, sent)
    finally:
        dispatch._send = send
    if len(messages) != 3:
        raise RuntimeError(
            "Expected the creation, the claim and the success on the driver's "
            f"cursor, got {len(messages)} messages: does something watch the "
            "engine's statements?"
        )
    return (sent[0], workflow_id, plans, *messages)


def literal_statements(plans, message, cursor):
    """The ``EXECUTE`` statements of a message, as SQL with their values written in."""
    sql, values = message
    statements = []
    for part in sql.split("; "):
        if not part.startswith("EXECUTE "):
            continue  # an UNLISTEN the message carried
        name, arguments = part[len("EXECUTE ") :].split(" ", 1)
        keys = [a.strip()[2:-2] for a in arguments.strip("()").split(",") if a.strip()]
        literals = [cursor.mogrify("%s", (values[key],)).decode() for key in keys]
        text = plans[name].prepare.split(" AS ", 1)[1].replace("%%", "%")
        statements.append(
            _POSITION.sub(lambda match: literals[int(match.group(1)) - 1], text)
        )
    return statements


def split_with(sql):
    """``WITH a AS (...), b AS (...) <rest>`` as ``([clauses], rest)``."""
    if not sql.startswith("WITH "):
        raise ValueError(f"not a WITH statement: {sql[:40]}")
    clauses, depth, quoted, start, index = [], 0, False, 5, 5
    while index < len(sql):
        char = sql[index]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                clauses.append(sql[start : index + 1].strip())
                after = len(sql) - len(sql[index + 1 :].lstrip())
                if sql[after] != ",":
                    return clauses, sql[after:]
                start, index = after + 1, after
        index += 1
    raise ValueError("unbalanced WITH statement")


def without_versions(sql, rest=None):
    """``sql`` without Continuum's transaction row and version copies.

    :param rest: what follows the ``WITH`` clauses instead of ``sql``'s own.
    """
    clauses, own = split_with(sql)
    kept = [
        c
        for c in clauses
        if not c.startswith(("wtflow_transaction", "wtflow_versions"))
    ]
    return f"WITH {', '.join(kept)} {rest or own}"


def emptied(sql, name, table):
    """``sql`` with its ``WITH`` clause ``name`` made an empty read of ``table``'s rows."""
    clauses, rest = split_with(sql)
    clauses = [
        (
            f"{name} AS (SELECT {table}.* FROM {table} WHERE false)"
            if c.startswith(f"{name} AS ")
            else c
        )
        for c in clauses
    ]
    return f"WITH {', '.join(clauses)} {rest}"


def variants(plans, creation, claim, success, task, workflow_id, cursor):
    """Every variant measured: its name, statements, reset and, for a creation, restore.

    The reset comes before each try; the restore (the run created again as
    the engine created it) after it, so that every variant finds the run
    as the engine left it.
    """
    [creation_sql] = literal_statements(plans, creation, cursor)
    creation_clauses, _ = split_with(creation_sql)
    claim_sql = literal_statements(plans, claim, cursor)
    lock_sql, finish_sql = literal_statements(plans, success, cursor)
    [claim_sql] = claim_sql
    clauses, _ = split_with(claim_sql)
    row = cursor.mogrify(
        "id = %s AND celery_id = %s", (str(task.task_run_id), task.celery_id)
    ).decode()
    run_id = cursor.mogrify("%s", (str(workflow_id),)).decode()
    run = f"id = {run_id}"
    queued = (
        f"{ASYNC}UPDATE wtflow_task SET status = 'queued', retries = 0, "
        f"started_at = NULL WHERE {row}"
    )
    running = (
        f"{ASYNC}UPDATE wtflow_task SET status = 'running', retries = 0, "
        f"finished_at = NULL, result = NULL WHERE {row}; "
        f"UPDATE wtflow_workflow SET status = 'running', finished_at = NULL "
        f"WHERE {run}"
    )
    deleted = (
        f"{ASYNC}DELETE FROM wtflow_task WHERE workflow_id = {run_id}; "
        f"DELETE FROM wtflow_workflow WHERE {run}"
    )
    restored = f"{deleted}; {creation_sql}"  # the run as the engine created it
    return [
        ("creation: the engine's", [creation_sql], deleted, restored),
        (
            "creation: without versions",
            [without_versions(creation_sql, "SELECT id FROM run")],
            deleted,
            restored,
        ),
        (
            "creation: the run's row alone",
            [f"WITH {creation_clauses[0]} SELECT id FROM run"],
            deleted,
            restored,
        ),
        ("claim: the engine's", [claim_sql], queued),
        ("claim: without versions", [without_versions(claim_sql)], queued),
        (
            "claim: without its reads",
            [f"WITH {', '.join(clauses)} SELECT claimed.id FROM claimed"],
            queued,
        ),
        (
            "claim: the floor's UPDATE",
            [
                "UPDATE wtflow_task SET status = 'running', started_at = now() "
                f"WHERE {row} AND status = 'queued'"
            ],
            queued,
        ),
        ("success: the engine's (lock, statement)", [lock_sql, finish_sql], running),
        ("success: without the lock", [finish_sql], running),
        (
            "success: without versions",
            [lock_sql, without_versions(finish_sql)],
            running,
        ),
        (
            "success: without the dependants' release",
            [lock_sql, emptied(finish_sql, "released", "wtflow_task")],
            running,
        ),
        (
            "success: without the run's update",
            [lock_sql, emptied(finish_sql, "run", "wtflow_workflow")],
            running,
        ),
        (
            "success: the floor's UPDATE and NOTIFY",
            [
                "UPDATE wtflow_task SET status = 'success', finished_at = now() "
                f"WHERE {row} AND status = 'running'",
                "NOTIFY wtflow_bench_floor, 'done'",
            ],
            running,
        ),
    ]


def measure(connection, measured, tries=TRIES):
    """Median seconds of each variant's message, in each commit mode."""
    cursor = connection.cursor()
    messages = {}
    for number, (name, statements, reset, *after) in enumerate(measured):
        names = []
        for index, sql in enumerate(statements):
            prepared_name = f"wtflow_cost_{number}_{index}"
            if sql.startswith(("WITH", "SELECT", "UPDATE")):
                cursor.execute(f"PREPARE {prepared_name} AS {sql}")
                names.append(f"EXECUTE {prepared_name}")
            else:
                names.append(sql)
        messages[name] = ("; ".join(names), reset, "; ".join(after))
    times = {(name, mode): [] for name in messages for mode in ("sync", "async")}
    for _ in range(max(1, tries // BLOCK)):
        for (name, mode), values in times.items():
            message, reset, after = messages[name]
            if mode == "async":
                message = ASYNC + message
            for _ in range(BLOCK):
                cursor.execute(reset)
                start = time.perf_counter()
                cursor.execute(message)
                values.append(time.perf_counter() - start)
                if after:
                    cursor.execute(after)
    return {key: statistics.median(values) for key, values in times.items()}


def main(tries=TRIES):
    """Print each variant's median round trip, synchronous and not."""
    with bench_app():
        task, workflow_id, plans, creation, claim, success = one_run()
        connection = _connect()
        try:
            measured = variants(
                plans, creation, claim, success, task, workflow_id, connection.cursor()
            )
            medians = measure(connection, measured, tries)
        finally:
            connection.close()
    print(
        f"median round trip, ms ({tries} tries each, in blocks of {BLOCK}):\n"
        f"  {'variant':45s} {'commit':>7s} {'no flush':>9s}"
    )
    for name, *_ in measured:
        print(
            f"  {name:45s} {1000 * medians[name, 'sync']:7.3f} "
            f"{1000 * medians[name, 'async']:9.3f}"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
