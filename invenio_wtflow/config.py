# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Configuration of invenio-wtflow."""

WTFLOW_WORKFLOWS = {}
"""Registered workflow definitions, by name.

Each value is a dictionary whose ``definition`` is a Celery canvas, a
:class:`invenio_wtflow.api.Workflow` subclass, or an import string to one of
them (``"my_site.workflows:VideoProcessing"``). Packages can also register
definitions through the ``invenio_wtflow.workflows`` entry point group.
"""

WTFLOW_REQUEUE_AFTER = 300
"""Seconds a task may stay ``queued`` with no worker claiming it.

After that the sweeper (:func:`invenio_wtflow.tasks.requeue_stale`, meant to
run from Celery beat) publishes its message again, so a crash between the
database commit and the publish loses nothing. Duplicate messages are harmless:
only one delivery can claim an attempt.
"""

WTFLOW_TASK_LEASE = 600
"""Seconds a running attempt may go without a sign of life.

An attempt shows life when it starts and each time its body calls
``self.update_status()`` or ``self.heartbeat()``. When the lease expires (the
worker was killed, the machine lost, a hard time limit hit), the sweeper runs
the task again as a new attempt, or fails it once ``WTFLOW_MAX_ATTEMPTS`` are
used. Set it above the longest run of a task that does not report, or give
the task its own with ``@workflow_task(lease=seconds)``.
"""

WTFLOW_MAX_ATTEMPTS = 3
"""Attempts of a task the sweeper may start after leases expire.

Restarts by a person are not limited; this only bounds automatic recovery.
"""

WTFLOW_DB_RETRIES = 5
"""How many times an engine transaction is retried on a transient error.

Transient errors are deadlocks, serialization failures, a locked SQLite
database and lost connections; each retry starts a fresh transaction.
"""

WTFLOW_PREPARED_STATEMENTS = True
"""Prepare the hot path's statements on psycopg2 connections to PostgreSQL.

Each connection parses and plans them once instead of at every task (see
:mod:`invenio_wtflow.engine.prepared`; psycopg 3 prepares statements by
itself). Set it to ``False`` when the workers reach PostgreSQL through a
pooler that shares a database session between clients, such as PgBouncer
in transaction pooling mode.
"""

WTFLOW_CLAIM_SYNCHRONOUS_COMMIT = False
"""Whether an attempt's claim waits for PostgreSQL to flush it before the body runs.

``False`` (the default; PostgreSQL through psycopg2 with
``WTFLOW_PREPARED_STATEMENTS``): the claim commits with ``synchronous_commit``
off for its own transaction, and the task's body starts one flush of the
database's disk sooner (an ``fsync``: a fraction of a millisecond on a local
SSD, milliseconds on some network disks). Every other transaction sees the
claim at once, so a duplicate delivery still claims nothing, and the next
flushed commit (the attempt's outcome, at the latest) makes it durable. The
first attempts of a run created at once are published before the creation
is flushed (their message says so): their claim skips the flush only when
the WAL is flushed up to it and no synchronous standby is configured
(``synchronous_standby_names``), and otherwise waits as the server's
``synchronous_commit`` says, flushing the creation too, so that no body
runs for a run a crash (or, with synchronous replication, a failover) could
still forget. Outcomes, creations and every other transition always wait
for their flush. (psycopg 3, or ``WTFLOW_PREPARED_STATEMENTS = False``:
every claim waits for its flush, whatever this setting says.)

What it costs: a crash of the database before its WAL writer flushes the
claim (up to three times ``wal_writer_delay``, 200 ms by default), or a
failover to a standby that had not received it, forgets the claim, and the
task is ``queued`` again under the same attempt while its body runs on.
The body's next heartbeat, progress report, spawn or delegation, or its
outcome, claims the attempt again (in the report's transaction; a success,
in one just before) and is applied; the task's ``running`` version and
``started_at`` are then the second claim's. The sweeper, finding that the database has recovered
from a crash or been promoted (an ``UNLOGGED`` row is gone), does not
publish again the attempts queued before it noticed for their task's lease
(``WTFLOW_TASK_LEASE`` or the task's ``lease``), the time a body may go
without a sign of life; a body silent for longer may then run a second time
beside the first (the first outcome is recorded), as after any expired
lease. (Celery itself records that a task started only when asked to,
``task_track_started``, and never durably.)

``True``: every claim waits for its flush (and for a synchronous standby,
where there is one) before the body runs; a crash never forgets a claim,
and the sweeper holds nothing back after one.

Give the sweeper and the workers the same setting (and the same
``WTFLOW_PREPARED_STATEMENTS``). See :doc:`operations` for what to expect
after a crash or a failover.
"""

WTFLOW_SQLITE_SERIALIZE = True
"""Make SQLite transactions real and the engine's ones writers at once.

SQLite is the embedded default: this makes its transactions and savepoints
real, begins the engine's transactions with ``BEGIN IMMEDIATE`` (so writers
are serialised and the conditional transitions hold) and turns on WAL mode so
readers never block the writer (see :mod:`invenio_wtflow.engine.sqlite`).
It has no effect on other databases.
"""

WTFLOW_DELEGATE_TIMEOUT = 24 * 3600
"""Seconds a delegated task waits for its completion when the body gives none.

``self.delegate(timeout=...)`` overrides it. The completion token expires at
the deadline, and the sweeper (:func:`invenio_wtflow.tasks.requeue_stale`)
fails a task still waiting then, with a ``Timeout`` error; what depends on it
is cancelled.
"""

WTFLOW_API_URL = None
"""External URL of the REST API, its prefix included.

A delegated task's completion URL is built from it, for example
``"https://example.org/api/workflows"`` gives
``https://example.org/api/workflows/<id>/tasks/<task_id>/complete``. A worker
has no request to take the host from, and Invenio's Celery application may not
register the API blueprints. ``None``: ``SITE_API_URL`` followed by
:data:`WTFLOW_URL_PREFIX`, or, when ``SITE_API_URL`` is not set either, the
blueprint's URL built with ``url_for`` (which needs ``SERVER_NAME``).
"""

WTFLOW_REVOKE_TERMINATE = False
"""Whether stopping a task also terminates its running attempt.

``False`` (Celery's default for ``revoke``) drops queued attempts and lets a
running body finish; its late result is ignored either way. ``True`` sends
``SIGTERM`` to the worker process running it, which suits long transcodes but
interrupts whatever the body was doing.
"""

WTFLOW_CHECK_POPULATE = False
"""Call ``populate()`` twice in a row and fail the run if the second call
changes the graph.

``populate()`` must be idempotent: the root's orchestrator calls it again
whenever a node of the run succeeds. Turn this on in tests to catch a
``populate()`` that is not; it doubles the cost of each call.
"""

WTFLOW_ORCHESTRATION_STEPS = 1000
"""Most ``populate()`` and callback calls one orchestrator pass may make.

A pass runs what its own steps queue; a callback that keeps adding callbacks
would never settle. The step over the budget fails, with the reason.
"""

WTFLOW_ORCHESTRATION_DELAY = 0.1
"""Seconds of quiet before an orchestrator pass runs.

Requests for a pass are coalesced: a pass whose tree asked again less than
this long ago waits this long more, so a burst of completions (a wide group
finishing) is served by one pass rather than one per lock turn. ``0`` runs a
pass as soon as a worker takes it.
"""

WTFLOW_ORCHESTRATION_MAX_DELAY = 2.0
"""Longest a pass waits for quiet after it was first asked for, in seconds."""

WTFLOW_PERMISSION_FACTORY = "invenio_wtflow.permissions:permission_factory"
"""Import string of ``permission_factory(workflow, action)``.

A definition can override it with a ``permission_factory`` key in
:data:`WTFLOW_WORKFLOWS`.
"""

WTFLOW_URL_PREFIX = "/workflows"
"""URL prefix of the REST API's blueprint."""

WTFLOW_DEFAULT_PAGE_SIZE = 25
"""Page size of lists when the request gives none."""

WTFLOW_MAX_PAGE_SIZE = 100
"""Largest page size a request may ask for."""

WTFLOW_MAX_BODY_SIZE = 1024 * 1024
"""Largest request body, in bytes, the REST API accepts (413 above)."""

WTFLOW_UI_URL_PREFIX = "/workflows"
"""URL prefix of the status pages (the UI blueprint).

``/workflows/`` lists the runs and ``/workflows/<id>`` shows one run live.
In an Invenio instance the UI and REST applications are separate, so the
pages and the REST API (:data:`WTFLOW_URL_PREFIX`, under ``/api``) can share
the prefix; a site serving both from one application must give them
different prefixes.
"""

WTFLOW_UI_API_URL = None
"""Where the status pages' script calls the REST API: a path, or a URL of the
same site (the script's requests carry the user's session cookie).

``None``: the REST blueprint's URL when the same application serves it (a
single-application site), else ``/api`` followed by :data:`WTFLOW_URL_PREFIX`
(where Invenio mounts its REST application).
"""

WTFLOW_UI_BASE_TEMPLATE = "invenio_wtflow/base.html"
"""Template the status pages extend.

The default is a standalone page that needs no asset build. To show the
pages inside the site's theme, set it to the theme's page template (for
example ``"invenio_theme/page.html"``): the pages fill its ``head_title``,
``css``, ``page_body`` and ``javascript`` blocks.
"""

WTFLOW_UI_POLL_INTERVAL = 2.0
"""Seconds between two polls of the REST API while a run's page is live.

Polls send ``If-None-Match``: while nothing changes the API answers
``304 Not Modified`` with no body. Polling stops when the run is finished and
pauses while the page is hidden.
"""
