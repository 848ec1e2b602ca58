# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL through psycopg2: the hot path's statements, prepared once per connection.

PostgreSQL parses and plans a statement each time it receives its text: for
the claim (see :mod:`~invenio_wtflow.engine.fused`) that is about two thirds
of its time. psycopg 3 prepares the statements a connection runs often;
psycopg2 sends text every time. On psycopg2 connections, :func:`execute`
prepares a statement (``PREPARE``) the first time a connection runs it and
executes it by name (``EXECUTE``) from then on. A prepared statement lives as
long as its connection (SQLAlchemy's pool forgets which ones a connection
has when it connects again), and outlives a rollback.

Turn it off with ``WTFLOW_PREPARED_STATEMENTS = False`` where one database
session serves several clients, as PgBouncer does in transaction pooling
mode: a statement prepared in one session is unknown to the next.
"""

import hashlib
import re
from functools import lru_cache

from flask import current_app
from sqlalchemy import bindparam, text

_PREPARED = "wtflow_prepared"
"""Key, in a connection's ``info``, of the names prepared on it."""

_PARAMETER = re.compile(r"%\((\w+)\)s")


def execute(session, statement, params):
    """Execute ``statement``, prepared on psycopg2 connections when enabled.

    :param session: the session whose connection runs it.
    :param statement: a statement without expanding parameters, whose rows
        come from its selected columns (text or Core, not ORM entities).
    :param params: its parameters.
    :returns: the result, as ``session.execute`` returns it.
    """
    dialect = session.get_bind().dialect
    if (
        dialect.driver != "psycopg2"
        or not current_app.config["WTFLOW_PREPARED_STATEMENTS"]
    ):
        return session.execute(statement, params)
    name, prepare, run, compiled = _prepared(statement, dialect)
    connection = session.connection()
    names = connection.info.setdefault(_PREPARED, set())
    if name not in names:
        connection.exec_driver_sql(prepare)
        names.add(name)
    return session.execute(run, compiled.construct_params(params))


@lru_cache(maxsize=None)
def _prepared(statement, dialect):
    """The name, ``PREPARE`` and ``EXECUTE`` of a statement, and its compiled form.

    The name is a digest of the SQL, so two statements never share one.
    ``EXECUTE`` passes the parameters in the order of their first use,
    typed as in the statement, and reads the same columns.
    """
    compiled = statement.compile(dialect=dialect)
    order = []

    def position(match):
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    sql = _PARAMETER.sub(position, compiled.string)  # "%%" stays: see execute()
    name = "wtflow_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    run = text(f"EXECUTE {name} ({', '.join(f':{p}' for p in order)})")
    run = run.bindparams(*(bindparam(p, type_=compiled.binds[p].type) for p in order))
    columns = {c.name: c.type for c in getattr(statement, "selected_columns", ())}
    if columns:
        run = run.columns(**columns)
    return name, f"PREPARE {name} AS {sql}", run, compiled
