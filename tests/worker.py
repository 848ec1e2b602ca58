# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Celery application of the test worker (``celery -A tests.worker worker``).

Reads ``SQLALCHEMY_DATABASE_URI`` and ``WTFLOW_TEST_BROKER_URL`` from the
environment, like the integration tests that start it.
``WTFLOW_TEST_WORKER_DATABASE_URI``, when set, is the worker's own URL of the
same database: through another driver (psycopg 3 while the tests use
psycopg2, say). ``WTFLOW_TEST_WORKER_CLAIM_SYNCHRONOUS_COMMIT``, when set
(``1`` or ``0``), is its ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``; unset, the
package's default.
"""

import os

from .app import create_test_app

_SYNCHRONOUS_CLAIMS = os.environ.get("WTFLOW_TEST_WORKER_CLAIM_SYNCHRONOUS_COMMIT")

app = create_test_app(
    SQLALCHEMY_DATABASE_URI=os.environ.get("WTFLOW_TEST_WORKER_DATABASE_URI")
    or os.environ.get("SQLALCHEMY_DATABASE_URI", "sqlite://"),
    CELERY_BROKER_URL=os.environ.get("WTFLOW_TEST_BROKER_URL", "memory://"),
    CELERY_TASK_ALWAYS_EAGER=False,
    CELERY_RESULT_BACKEND=None,
    CELERY_TASK_ACKS_LATE=True,
    CELERY_WORKER_PREFETCH_MULTIPLIER=1,
    WTFLOW_ORCHESTRATION_DELAY=0.1,
    **(
        {"WTFLOW_CLAIM_SYNCHRONOUS_COMMIT": _SYNCHRONOUS_CLAIMS == "1"}
        if _SYNCHRONOUS_CLAIMS
        else {}
    ),
)
celery = app.extensions["flask-celeryext"].celery
