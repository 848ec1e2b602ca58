# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""PostgreSQL: which queued attempts a crash may have left running, for the sweeper.

A claim committed without waiting for its flush
(``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = False``) is forgotten by a crash of the
database before the flush: its task is ``queued`` again while the body may
still run, and the body's next report claims the attempt again. Published
again by the sweeper before that, the attempt would be claimed and run by a
second worker beside the first. The sweeper cannot tell such tasks from the
others queued before the crash, so after a crash it holds back every task
queued before it noticed the crash, for as long as the task's body may go
without a sign of life (its lease).

It notices the crash by the row of :class:`~invenio_wtflow.models.Uptime`,
in an ``UNLOGGED`` table, which PostgreSQL empties when it recovers from a
crash (and which a promoted standby does not have): finding no row, the
sweeper writes one with the time it found none. The row is written when
the table is created, with the epoch (no crash known: nothing is held
back), and kept whatever the setting, so that neither a new table nor
choosing unflushed claims later looks like a crash. The setting must be
the same for the sweeper and the workers.
"""

import logging
from datetime import timedelta

from celery import current_app as current_celery_app
from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from ..models import Uptime

logger = logging.getLogger(__name__)

CLOCK_SKEW = timedelta(minutes=1)
"""How far ahead of the sweeper's clock the clocks of the hosts that queue
attempts may be: an attempt queued up to this long after the crash was
noticed is held back too."""


def crash_noticed(session, now):
    """When the sweeper found the database recovered from a crash, or ``None``.

    ``None`` off PostgreSQL, and where claims wait for their flush
    (``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``, or no prepared statements:
    nothing to hold back); the uptime row is read, and written when
    missing, on PostgreSQL all the same. A sweeper on psycopg 3 holds back
    all the same: the workers' driver may be psycopg2.

    :param session: the sweeper's session (the row is written in its
        transaction).
    :param now: the sweeper's time, written when the row is missing.
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    config = current_app.config
    unflushed = (
        not config["WTFLOW_CLAIM_SYNCHRONOUS_COMMIT"]
        and config["WTFLOW_PREPARED_STATEMENTS"]
    )
    since = _since(session)
    if since is None:
        written = session.execute(
            insert(Uptime)
            .values(id=1, since=now)
            .on_conflict_do_nothing()
            .returning(Uptime.since)
        ).scalar()
        since = written or _since(session) or now  # or another sweeper's
        if written and unflushed:
            logger.warning(
                "The uptime row was gone: the database has recovered from a crash, "
                "which may have forgotten claims committed unflushed. Attempts "
                "queued before %s are held back for their task's lease.",
                since.isoformat(),
            )
    return since if unflushed else None


def held_back(task, since, now):
    """Whether a queued attempt is not to be published again yet.

    :param task: the queued task run.
    :param since: what :func:`crash_noticed` returned.
    :param now: the sweeper's time.
    """
    if since is None or task.queued_at >= since + CLOCK_SKEW:
        return False
    return now < since + timedelta(seconds=_lease(task.name))


def _since(session):
    """The uptime row's time, or ``None``."""
    return session.execute(select(Uptime.since).where(Uptime.id == 1)).scalar()


def _lease(name):
    """A task's lease in seconds: its own (``lease`` option), or ``WTFLOW_TASK_LEASE``."""
    task = current_celery_app.tasks.get(name)
    return getattr(task, "lease", None) or current_app.config["WTFLOW_TASK_LEASE"]
