# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""A minimal Invenio site running a video-processing workflow on a real worker.

Everything lives in one directory (``WTFLOW_DEMO_DIR``, a temporary directory
by default): the SQLite database, the folders of kombu's ``filesystem``
transport, which plays the broker, and the inbox of a pretend subtitle farm.
No database or broker server is needed.

The workflow shows what the engine adds to a Celery canvas: a group, a task
that spawns one child workflow per quality and joins them (one child fails
the first time, and the demo restarts the task that spawned it), a task
delegated to an external service that completes it later over HTTP, and a
task reading the delegated result.

Run a worker from the repository's root::

    celery -A examples.demo_site worker --pool=solo --loglevel=INFO

and create, start, serve and watch a run with ``python -m examples.run_demo``
(``./run-demo.sh`` does both, in a fresh virtualenv).
"""

import json
import os
import tempfile
import time
import warnings

from celery import chain, group
from flask import Flask, current_app
from flask_celeryext import FlaskCeleryExt
from invenio_access import InvenioAccess, Permission
from invenio_access.permissions import any_user
from invenio_accounts import InvenioAccountsREST
from invenio_db import InvenioDB
from invenio_i18n import InvenioI18N
from invenio_rest import InvenioREST
from sqlalchemy.exc import SAWarning

from invenio_wtflow import InvenioWTFlow, Workflow, workflow_task
from invenio_wtflow.ui import create_ui_blueprint
from invenio_wtflow.views import create_blueprint

# Inside invenio-db's unit of work (a SAVEPOINT), SQLAlchemy-Continuum's
# before_flush hook makes SQLAlchemy open one more SAVEPOINT, which SQLite
# releases together with its parent; SQLAlchemy then warns "nested transaction
# already deassociated from connection". The data is committed correctly.
warnings.filterwarnings("ignore", "nested transaction already deassociated", SAWarning)
# invenio-rest announces a default it will change; the demo sends no cookies.
warnings.filterwarnings("ignore", "CSRF validation will be enabled", FutureWarning)

FLAKY_QUALITY = "1080p"
"""The quality whose transcode crashes the first time it runs."""


#
# The tasks
#
@workflow_task(bind=True)
def extract_metadata(self, video_id):
    """Pretend to probe the video container, reporting progress."""
    steps = ["opening container", "reading streams", "reading tags"]
    for i, step in enumerate(steps):
        self.update_status(message=step, progress=i / len(steps))
        time.sleep(0.4)
    return {"video_id": video_id, "duration": 42.0, "codec": "h264"}


@workflow_task(bind=True)
def extract_frames(self, video_id):
    """Pretend to extract key frames, reporting progress."""
    frames = 4
    for i in range(frames):
        self.update_status(message=f"frame {i + 1}/{frames}", progress=i / frames)
        time.sleep(0.3)
    return {"video_id": video_id, "frames": frames}


@workflow_task(bind=True)
def transcode_all(self, extracted, video_id, qualities):
    """Spawn one child workflow per quality, and wait for them all.

    ``extracted`` is the list of the group's results (Celery's chain
    semantics); ``video_id`` and ``qualities`` come from the workflow data.
    Joining holds no worker: the task is ``waiting`` until the children end.
    If this task is restarted, spawning again reuses the children that
    succeeded and restarts the ones that failed.
    """
    metadata, frames = extracted
    self.update_status(message=f"{metadata['codec']}, {frames['frames']} frames")
    children = [
        self.spawn("transcode", data={"video_id": video_id, "quality": quality})
        for quality in qualities
    ]
    return self.join(children)


@workflow_task(bind=True)
def transcode(self, video_id, quality):
    """Pretend to transcode to one quality (the task of a child workflow).

    The first run of :data:`FLAKY_QUALITY` crashes, as a flaky encoder
    would: its child workflow fails, and so does the join.
    """
    for progress in (0.2, 0.5, 0.8):
        self.update_status(message=f"encoding {quality}", progress=progress)
        time.sleep(0.4)
    marker = os.path.join(current_app.config["WTFLOW_DEMO_DIR"], f"crashed-{quality}")
    if quality == FLAKY_QUALITY and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"encoder crashed on {quality} (simulated, first run only)")
    return {"quality": quality, "file": f"{video_id}-{quality}.mp4"}


@workflow_task(bind=True)
def send_to_subtitle_farm(self, files):
    """Hand subtitling to an external service; it completes the task later.

    The ticket (completion URL and token) goes to the service, here a file
    in its inbox that the demo's pretend farm picks up. Returning the ticket
    puts the task in ``waiting``; the worker is free meanwhile.
    """
    ticket = self.delegate(timeout=600)
    inbox = os.path.join(current_app.config["WTFLOW_DEMO_DIR"], "farm-inbox")
    job = {
        "url": ticket.url,
        "token": ticket.token,
        "files": [f["file"] for f in files],
    }
    with open(os.path.join(inbox, f"{ticket.task_id}.json"), "w") as fp:
        json.dump(job, fp)
    self.update_status(message=f"sent {len(files)} files to the subtitle farm")
    return ticket


@workflow_task(bind=True)
def publish(self, subtitles, video_id):
    """Publish the video with the subtitles the farm made."""
    self.update_status(message="publishing")
    time.sleep(0.3)
    tracks = ", ".join(subtitles["tracks"])
    return f"published video {video_id} with subtitles in {tracks}"


class VideoWorkflow(Workflow):
    """Extract in parallel, transcode per quality, subtitle externally, publish."""

    definition = chain(
        group(extract_metadata, extract_frames),
        transcode_all.s(),
        send_to_subtitle_farm.s(),
        publish.s(),
    )


class TranscodeWorkflow(Workflow):
    """One quality: the child workflow ``transcode_all`` spawns."""

    definition = transcode


def allow_everyone(workflow, action):
    """Let anyone act on any run: this demo has no users. Never in a real site."""
    return Permission(any_user)


#
# The site
#


def demo_dir():
    """Return (and create) the directory of the database, queues and farm."""
    path = os.environ.get("WTFLOW_DEMO_DIR") or os.path.join(
        tempfile.gettempdir(), "invenio-wtflow-demo"
    )
    path = os.path.abspath(path)
    for sub in ("broker/queue", "broker/processed", "broker/control", "farm-inbox"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def create_app(**config):
    """Create the demo application: one Flask app with the API and the pages.

    :param config: configuration overriding the defaults.
    """
    path = demo_dir()
    broker = os.path.join(path, "broker")
    port = int(os.environ.get("WTFLOW_DEMO_PORT", "5080"))
    app = Flask("demo_site", instance_path=path)
    app.config.update(
        SECRET_KEY="demo-not-secret",
        WTFLOW_DEMO_DIR=path,
        WTFLOW_DEMO_PORT=port,
        # Database: one SQLite file. The extension starts SQLite transactions
        # with BEGIN IMMEDIATE; the busy timeout makes the other process wait
        # for the lock instead of failing with "database is locked".
        SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(path, "demo.db"),
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 30}},
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        DB_VERSIONING_USER_MODEL=None,
        ACCOUNTS_USE_CELERY=False,
        ACCOUNTS_SESSION_ACTIVITY_ENABLED=False,
        SECURITY_PASSWORD_SALT="demo-not-secret",
        # Broker: kombu's filesystem transport, one file per message in a
        # folder shared by the publisher (this process) and the worker.
        CELERY_BROKER_URL="filesystem://localhost/",
        CELERY_BROKER_TRANSPORT_OPTIONS={
            "data_folder_in": os.path.join(broker, "queue"),
            "data_folder_out": os.path.join(broker, "queue"),
            "store_processed": True,
            "processed_folder": os.path.join(broker, "processed"),
            "control_folder": os.path.join(broker, "control"),
            "polling_interval": 0.1,
        },
        # No result backend: the database is the source of truth.
        CELERY_RESULT_BACKEND=None,
        CELERY_TASK_IGNORE_RESULT=True,
        CELERY_TASK_ALWAYS_EAGER=False,
        CELERY_TASK_ACKS_LATE=True,
        CELERY_WORKER_PREFETCH_MULTIPLIER=1,
        WTFLOW_WORKFLOWS={
            "video": "examples.demo_site:VideoWorkflow",
            "transcode": "examples.demo_site:TranscodeWorkflow",
        },
        WTFLOW_PERMISSION_FACTORY=allow_everyone,
        # One application serves both: the API under /api, the pages beside.
        WTFLOW_URL_PREFIX="/api/workflows",
        WTFLOW_UI_URL_PREFIX="/workflows",
        WTFLOW_UI_API_URL="/api/workflows",
        # The worker builds the delegated task's completion URL from this.
        WTFLOW_API_URL=f"http://127.0.0.1:{port}/api/workflows",
    )
    app.config.update(config)
    celery = FlaskCeleryExt(app).celery
    # A setting Flask-CeleryExt does not map (it silences a deprecation).
    celery.conf.broker_connection_retry_on_startup = True
    InvenioDB(app)
    InvenioI18N(app)
    InvenioAccountsREST(app)
    InvenioAccess(app)
    InvenioREST(app)
    InvenioWTFlow(app)
    app.register_blueprint(create_blueprint(app))
    app.register_blueprint(create_ui_blueprint(app))
    return app


flask_app = create_app()
"""The demo application (not named ``app``: ``celery -A`` would pick it)."""

celery = flask_app.extensions["flask-celeryext"].celery
"""The Celery application, for ``celery -A examples.demo_site worker``."""
