# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""A light Invenio application for the tests and the test worker."""

from flask import Flask
from flask_celeryext import FlaskCeleryExt
from invenio_access import InvenioAccess
from invenio_accounts import InvenioAccountsREST
from invenio_accounts.views.rest import create_rest_blueprint
from invenio_db import InvenioDB
from invenio_i18n import InvenioI18N
from invenio_rest import InvenioREST

from invenio_wtflow import InvenioWTFlow
from invenio_wtflow.ui import create_ui_blueprint
from invenio_wtflow.views import create_blueprint


def create_test_app(**config):
    """Create a Flask app with only the extensions invenio-wtflow needs.

    :param config: configuration overriding the defaults.
    """
    app = Flask("testapp")
    app.config.update(
        SECRET_KEY="test",
        TESTING=True,
        DB_VERSIONING_USER_MODEL="User",
        SECURITY_PASSWORD_SALT="test",
        ACCOUNTS_USE_CELERY=False,
        ACCOUNTS_SESSION_ACTIVITY_ENABLED=False,
        WTF_CSRF_ENABLED=False,
        SERVER_NAME="localhost",
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        CELERY_TASK_ALWAYS_EAGER=True,
        CELERY_TASK_EAGER_PROPAGATES=True,
        CELERY_RESULT_BACKEND="cache",
        CELERY_CACHE_BACKEND="memory",
        WTFLOW_WORKFLOWS=EXAMPLE_WORKFLOWS,
        WTFLOW_CHECK_POPULATE=True,
        # Eager passes run at once; tests/worker.py restores the default.
        WTFLOW_ORCHESTRATION_DELAY=0,
        # One application serves the REST API and the status pages here (an
        # Invenio instance has two, and mounts the REST one under /api).
        WTFLOW_UI_URL_PREFIX="/ui/workflows",
    )
    app.config.update(config)
    if app.config.get("CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS") is not None:
        # pytest-invenio sets a key flask-celeryext does not map.
        app.config["CELERY_TASK_EAGER_PROPAGATES"] = True
    FlaskCeleryExt(app)
    InvenioDB(app)
    InvenioI18N(app)
    InvenioAccountsREST(app)
    InvenioAccess(app)
    InvenioREST(app)
    InvenioWTFlow(app)
    app.register_blueprint(create_rest_blueprint(app))
    app.register_blueprint(create_blueprint(app))
    app.register_blueprint(create_ui_blueprint(app))
    from . import example_tasks  # noqa: F401 - registers the tasks

    return app


EXAMPLE_WORKFLOWS = {
    "video": {"definition": "tests.example_tasks:VideoProcessing"},
    "encode-video": {"definition": "tests.example_tasks:EncodeVideo"},
    "add-chain": {"definition": "tests.example_tasks:add_chain"},
    "unflushed-chain": {"definition": "tests.example_tasks:unflushed_chain"},
    "told-input": {"definition": "tests.example_tasks:told_input_chain"},
    "fan-out": {"definition": "tests.example_tasks:fan_out"},
    "flaky": {"definition": "tests.example_tasks:flaky_workflow"},
    "failing": {"definition": "tests.example_tasks:failing_workflow"},
    "slow": {"definition": "tests.example_tasks:slow_workflow"},
    "join": {"definition": "tests.example_tasks:JoinWorkflow"},
    "transcode-one": {"definition": "tests.example_tasks:transcode_one"},
    "transcode-all": {"definition": "tests.example_tasks:TranscodeAll"},
    "spawn-by-key": {"definition": "tests.example_tasks:spawn_by_key"},
    "join-foreign": {"definition": "tests.example_tasks:join_foreign"},
    "with-subworkflow": {"definition": "tests.example_tasks:WithSubworkflow"},
    "mark-child": {"definition": "tests.example_tasks:mark_child"},
    "spawn-wide": {"definition": "tests.example_tasks:SpawnWide"},
    "spawn-then-retry": {"definition": "tests.example_tasks:spawn_then_retry"},
    "spawn-each": {"definition": "tests.example_tasks:spawn_each"},
    "spawn-batch": {"definition": "tests.example_tasks:spawn_batch"},
    "spawn-and-hang": {"definition": "tests.example_tasks:spawn_and_hang"},
    "spawn-detached": {"definition": "tests.example_tasks:spawn_detached"},
    "join-hex": {"definition": "tests.example_tasks:join_hex"},
    "half-failing": {"definition": "tests.example_tasks:half_failing"},
    "one-at-a-time": {"definition": "tests.example_tasks:OneAtATime"},
    "two-at-a-time": {"definition": "tests.example_tasks:nap", "max_runs": 2},
    "per-video": {
        "definition": "tests.example_tasks:nap",
        "max_runs": 1,
        "concurrency_key": "tests.example_tasks:video_key",
    },
    "regression": {"definition": "tests.example_tasks:RegressionAnalysis"},
    "grow-from-callback": {"definition": "tests.example_tasks:GrowFromCallback"},
    "unsteady": {"definition": "tests.example_tasks:Unsteady"},
    "bad-callback": {"definition": "tests.example_tasks:BadCallback"},
    "regression-inside": {"definition": "tests.example_tasks:RegressionInside"},
    "slow-populate": {"definition": "tests.example_tasks:SlowPopulate"},
    "farm": {"definition": "tests.example_tasks:farm_workflow"},
    "delegate-twice": {"definition": "tests.example_tasks:delegate_twice"},
    "delegate-then-join": {"definition": "tests.example_tasks:delegate_then_join"},
    "failing-one-at-a-time": {
        "definition": "tests.example_tasks:boom",
        "max_runs": 1,
    },
}
"""Definitions registered in every test application."""
