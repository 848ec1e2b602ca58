# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""A minimal Invenio site running a video-processing workflow on a real worker.

Everything lives in one directory (``WTFLOW_DEMO_DIR``, a temporary directory
by default): the SQLite database and the folders of kombu's ``filesystem``
transport, which plays the broker. No server is needed.

Run a worker from the repository's root::

    celery -A examples.demo_site worker --pool=solo --loglevel=INFO

and create, start and watch a run with ``python -m examples.run_demo``
(``./run-demo.sh`` does both, in a fresh virtualenv).
"""

import os
import tempfile
import time
import warnings

from celery import chain, group
from flask import Flask, current_app
from flask_celeryext import FlaskCeleryExt
from invenio_db import InvenioDB
from sqlalchemy.exc import SAWarning

from invenio_wtflow import InvenioWTFlow, Workflow, workflow_task

# Inside invenio-db's unit of work (a SAVEPOINT), SQLAlchemy-Continuum's
# before_flush hook makes SQLAlchemy open one more SAVEPOINT, which SQLite
# releases together with its parent; SQLAlchemy then warns "nested transaction
# already deassociated from connection". The data is committed correctly.
warnings.filterwarnings("ignore", "nested transaction already deassociated", SAWarning)

#
# The workflow: four tasks, a fan-out, a join and a retried task.
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


@workflow_task(bind=True, max_retries=3)
def transcode(self, extracted, video_id, quality):
    """Pretend to transcode the video; the first attempt crashes and is retried.

    ``extracted`` is the list of the group's results (Celery's chain
    semantics); ``video_id`` comes from the workflow data. A marker file in the
    demo directory makes the first execution fail, as a flaky encoder would,
    and Celery retries it (``self.retry``) one second later.
    """
    metadata, frames = extracted
    self.update_status(message=f"encoding {quality}", progress=0.1)
    time.sleep(0.5)
    marker = os.path.join(current_app.config["WTFLOW_DEMO_DIR"], "transcode-failed")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise self.retry(
            exc=RuntimeError("encoder crashed (simulated, first try only)"),
            countdown=1,
        )
    for progress in (0.4, 0.7):
        self.update_status(message=f"encoding {quality}", progress=progress)
        time.sleep(0.4)
    return {
        "video_id": video_id,
        "quality": quality,
        "file": f"{video_id}-{quality}.mp4",
        "duration": metadata["duration"],
        "frames": frames["frames"],
    }


@workflow_task(bind=True)
def publish(self, video_id):
    """Publish the transcoded file (a bare task: it gets the workflow data)."""
    self.update_status(message="publishing")
    transcoded = self.results("transcode")
    time.sleep(0.3)
    return f"published {transcoded['file']} for video {video_id}"


class VideoWorkflow(Workflow):
    """Extract metadata and frames in parallel, transcode, then publish."""

    definition = chain(
        group(extract_metadata, extract_frames),
        transcode.s(quality="720p"),
        publish,
    )


#
# The site
#


def demo_dir():
    """Return (and create) the directory holding the database and the queues."""
    path = os.environ.get("WTFLOW_DEMO_DIR") or os.path.join(
        tempfile.gettempdir(), "invenio-wtflow-demo"
    )
    path = os.path.abspath(path)
    for sub in ("queue", "processed", "control"):
        os.makedirs(os.path.join(path, "broker", sub), exist_ok=True)
    return path


def create_app(**config):
    """Create the demo application (Flask + Celery + invenio-db + invenio-wtflow).

    :param config: configuration overriding the defaults.
    """
    path = demo_dir()
    broker = os.path.join(path, "broker")
    app = Flask("demo_site", instance_path=path)
    app.config.update(
        SECRET_KEY="demo-not-secret",
        WTFLOW_DEMO_DIR=path,
        # Database: one SQLite file. The extension starts SQLite transactions
        # with BEGIN IMMEDIATE; the busy timeout makes the other process wait
        # for the lock instead of failing with "database is locked".
        SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(path, "demo.db"),
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 30}},
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        DB_VERSIONING_USER_MODEL=None,
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
        WTFLOW_WORKFLOWS={"video": "examples.demo_site:VideoWorkflow"},
    )
    app.config.update(config)
    celery = FlaskCeleryExt(app).celery
    # A setting Flask-CeleryExt does not map (it silences a deprecation).
    celery.conf.broker_connection_retry_on_startup = True
    InvenioDB(app)
    InvenioWTFlow(app)
    return app


flask_app = create_app()
"""The demo application (not named ``app``: ``celery -A`` would pick it)."""

celery = flask_app.extensions["flask-celeryext"].celery
"""The Celery application, for ``celery -A examples.demo_site worker``."""
