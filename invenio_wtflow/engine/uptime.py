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
queued before it noticed the crash, for as long as a body may go without a
sign of life (``WTFLOW_TASK_LEASE``).

It notices the crash by the row of :class:`~invenio_wtflow.models.Uptime`,
in an ``UNLOGGED`` table, which PostgreSQL empties when it recovers from a
crash: finding no row, the sweeper writes one with the time it found none.
A table just created is empty too, which holds back nothing that matters:
no attempt was queued before it.
"""

import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from ..models import Uptime

logger = logging.getLogger(__name__)


def held_back_before(session, now):
    """The time before which queued attempts are not published again, or ``None``.

    Only where claims commit unflushed, on PostgreSQL; else ``None``.

    :param session: the sweeper's session (the row is written in its
        transaction).
    :param now: the sweeper's time.
    """
    if (
        current_app.config["WTFLOW_CLAIM_SYNCHRONOUS_COMMIT"]
        or session.get_bind().dialect.name != "postgresql"
    ):
        return None
    since = _since(session)
    if since is None:
        session.execute(insert(Uptime).values(id=1, since=now).on_conflict_do_nothing())
        since = _since(session)
        logger.warning(
            "No uptime row: the database was created or has recovered from a "
            "crash, which may have forgotten claims committed unflushed. Attempts "
            "queued before %s are not published again before %s.",
            since.isoformat(),
            _end(since).isoformat(),
        )
    return since if now < _end(since) else None


def _since(session):
    """The uptime row's time, or ``None``."""
    return session.execute(select(Uptime.since).where(Uptime.id == 1)).scalar()


def _end(since):
    """When the hold back that began at ``since`` ends."""
    return since + timedelta(seconds=current_app.config["WTFLOW_TASK_LEASE"])
