# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Celery workers the integration tests start as processes, and stop."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root, where ``tests.worker`` is importable."""


def start_worker(db_uri, broker_url, node, log, concurrency=4, queues=None, **env):
    """Start a prefork worker of ``tests.worker``, logging to ``log``.

    :param db_uri: the database it writes.
    :param broker_url: the broker it consumes from.
    :param node: its node name (``<node>@<host>``).
    :param concurrency: number of pool processes.
    :param queues: the queues to consume (comma-separated; Celery's default
        queue when ``None``).
    :param env: more environment variables for it.
    :returns: the :class:`subprocess.Popen` of the worker.
    """
    env = dict(
        os.environ,
        SQLALCHEMY_DATABASE_URI=db_uri,
        WTFLOW_TEST_BROKER_URL=broker_url,
        PYTHONPATH=str(ROOT),
        **env,
    )
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.worker:celery",
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--prefetch-multiplier=1",
        "-n",
        f"{node}@%h",
    ]
    if queues:
        command += ["-Q", queues]
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc, timeout=30):
    """Terminate a process a test started, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        proc.wait()
