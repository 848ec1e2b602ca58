# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The engine with a real Celery worker (prefork, 4 processes) on PostgreSQL.

Selected when ``SQLALCHEMY_DATABASE_URI`` points to PostgreSQL and
``WTFLOW_TEST_BROKER_URL`` to a broker (Redis in CI).
"""

import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from celery import chain
from invenio_db import db as _db

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import dispatch, prepared
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.models import TaskRun, WorkflowRun

from .example_tasks import CLAIMS_QUEUE, JOIN_WIDTH, add, lost_once
from .processes import start_worker, stop
from .test_views_delegation import DONE, complete_at_once, post, statuses

BROKER_URL = os.environ.get("WTFLOW_TEST_BROKER_URL")
DB_URI = os.environ.get("SQLALCHEMY_DATABASE_URI", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (BROKER_URL and DB_URI.startswith("postgresql")),
        reason="needs SQLALCHEMY_DATABASE_URI (PostgreSQL) and WTFLOW_TEST_BROKER_URL",
    ),
]

CONCURRENCY = 4
TERMINAL = {"success", "failure", "cancelled"}


@pytest.fixture(scope="module")
def celery_config_ext(celery_config_ext):
    """Publish for real instead of running tasks eagerly."""
    celery_config_ext["CELERY_TASK_ALWAYS_EAGER"] = False
    celery_config_ext["CELERY_RESULT_BACKEND"] = None
    return celery_config_ext


@contextmanager
def running_worker(app, log, name, queues=None, **env):
    """Run a prefork worker with several processes until the block ends.

    :param name: the worker's node name, to ping it alone.
    :param queues: the queues it consumes (Celery's default: ``celery``).
    :param env: more environment variables for it.
    """
    celery = app.extensions["flask-celeryext"].celery
    proc = start_worker(
        DB_URI, BROKER_URL, name, log, CONCURRENCY, ",".join(queues or ()), **env
    )
    deadline = time.monotonic() + 60
    node = f"{name}@{socket.gethostname()}"
    while not celery.control.ping(destination=[node], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
    try:
        yield proc
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def worker(app, tmp_path_factory):
    """Start a prefork worker with several processes; stop it at the end."""
    app.extensions["flask-celeryext"].celery.control.purge()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with running_worker(app, log, f"wtflow-test-{os.getpid()}") as proc:
        yield proc


def wait(workflow_ids, timeout=120, until=TERMINAL):
    """Poll until every run's status is in ``until``; return the runs."""
    deadline = time.monotonic() + timeout
    while True:
        _db.session.rollback()
        _db.session.expire_all()
        runs = [Workflow.get(i) for i in workflow_ids]
        if all(r.status in until for r in runs):
            for run in runs:  # every test of this suite ends consistent
                assert check_workflow(run.id) == [], run.name
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"timeout: {[(r.name, r.status) for r in runs]}")
        time.sleep(0.2)


def wait_task(task_id, status, timeout=60):
    """Poll until a task has a status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _db.session.rollback()
        if Task.get(task_id).status == status:
            return
        time.sleep(0.1)
    pytest.fail(f"task {task_id} never became {status}")


def test_video_workflow(worker, clean):
    wf = Workflow.create("video", data={"video_id": 3}).start()
    (wf,) = wait([wf.id])
    assert wf.status == "success", [(t.name, t.status, t.error) for t in wf.tasks]
    assert wf.result == "published 3"
    for task in wf.tasks:
        assert [h["status"] for h in task.history()] == [
            "pending",
            "queued",
            "running",
            "success",
        ] or task.position == 0  # extract_metadata also reports a message


def test_the_message_tells_the_claim_whether_to_read_upstream_results(worker, clean):
    """The header survives the broker: the first task takes nothing, the
    second its result."""
    (wf,) = wait([Workflow.create("told-input", start=True).id])
    assert wf.status == "success"
    assert wf.result == [[False], True]


@pytest.mark.parametrize("synchronous", ["0", "1"], ids=["unflushed", "flushed"])
def test_claims_on_a_real_worker(app, clean, tmp_path, synchronous):
    """A worker of its own, claims committed unflushed (the default) or
    flushed, on a queue of its own: a run created at once runs to the end,
    its first attempt's message saying that the creation may not be flushed
    yet, the next one's not; bodies that find their claim lost have it
    claimed again by their heartbeat or their outcome."""
    log = tmp_path / "worker.log"
    with running_worker(
        app,
        log,
        f"wtflow-claims-{synchronous}-{os.getpid()}",
        queues=[CLAIMS_QUEUE],
        WTFLOW_TEST_WORKER_CLAIM_SYNCHRONOUS_COMMIT=synchronous,
    ):
        runs = [Workflow.create("unflushed-chain", start=True) for _ in range(5)]
        wait([run.id for run in runs])
    unflushed = prepared.enabled(_db.session) or None  # created at once, unflushed
    for run in runs:
        run = Workflow.get(run.id)
        assert run.status == "success", run.tasks
        assert [t.result for t in run.tasks] == [
            *(unflushed, None, "done", True),
            synchronous == "1",  # the worker's own setting
        ]
    assert log.read_text().count("its claim was lost") >= 10  # more if retried


def test_failure_propagates(worker, clean):
    wf = Workflow.create("failing").start()
    (wf,) = wait([wf.id])
    assert wf.status == "failure"
    assert [t.status for t in wf.tasks] == [
        "success",
        "failure",
        "cancelled",
        "cancelled",
        "cancelled",
    ]


def test_celery_retry(worker, clean, tmp_path):
    wf = Workflow.create("flaky", data={"counter_file": str(tmp_path / "c")})
    (wf,) = wait([wf.start().id])
    assert wf.status == "success", [(t.status, t.error) for t in wf.tasks]
    assert wf.tasks[0].result == 2 and wf.tasks[0].model.retries == 1


def test_stop_while_running_ignores_the_late_result(worker, clean):
    wf = Workflow.create("slow", data={"seconds": 2}).start()
    first = wf.tasks[0]
    wait_task(first.id, "running")
    wf.stop()
    assert [t.status for t in Workflow.get(wf.id).tasks] == ["cancelled"] * 2
    time.sleep(3)  # the body finishes and reports; nothing may change
    _db.session.rollback()
    wf = Workflow.get(wf.id)
    assert wf.status == "cancelled"
    assert [t.status for t in wf.tasks] == ["cancelled"] * 2
    assert "success" not in [h["status"] for h in wf.tasks[0].history()]


def test_restart_after_stop_runs_a_fresh_attempt(worker, clean):
    wf = Workflow.create("slow", data={"seconds": 1}).start()
    wait_task(wf.tasks[0].id, "running")
    revoked = wf.tasks[0].model.celery_id
    wf.stop()
    wf.restart(seconds=0)
    (wf,) = wait([wf.id])
    assert wf.status == "success"
    assert wf.tasks[0].model.celery_id != revoked
    assert [t.attempt for t in wf.tasks] == [2, 1]


def test_a_killed_worker_process_is_recovered_by_the_lease(worker, clean, tmp_path):
    """SIGKILL the pool process running a task: the lease brings it back."""
    current_wtflow.register("lost", chain(lost_once.si(), add.si(1, 1)))
    wf = Workflow.create("lost", data={"marker_dir": str(tmp_path)}).start()
    marker = tmp_path / "started"
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    wait_task(wf.tasks[0].id, "running")  # nobody tells the database
    time.sleep(2.5)  # the task's lease is 2 seconds
    assert dispatch.requeue_stale(older_than=3600) == 1
    (wf,) = wait([wf.id])
    assert wf.status == "success" and wf.result == 2
    assert wf.tasks[0].attempt == 2 and wf.tasks[0].result == "recovered"
    assert not [t for t in wf.tasks if t.status == "running"]


def test_restart_task_with_a_worker(worker, clean, tmp_path):
    wf = Workflow.create("join", data={"marker_dir": str(tmp_path)}).start()
    (wf,) = wait([wf.id])
    assert wf.status == "success"
    Task.get(wf.tasks[3].id).restart()
    (wf,) = wait([wf.id])
    assert wf.status == "success"
    assert (tmp_path / "member-3").read_text() == "xx"
    assert (tmp_path / "member-4").read_text() == "x"
    assert (tmp_path / "join").read_text() == "xx"


def test_sweeper_recovers_a_lost_publish(worker, clean, monkeypatch):
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    wf = Workflow.create("add-chain").start()
    monkeypatch.undo()
    time.sleep(0.5)
    assert [t.status for t in Workflow.get(wf.id).tasks][0] == "queued"
    assert dispatch.requeue_stale(older_than=0) == 1
    (wf,) = wait([wf.id])
    assert wf.status == "success" and wf.result == 60


@pytest.mark.parametrize("batch", range(5))
def test_join_fires_exactly_once(worker, clean, tmp_path, batch):
    """Four 200-task groups per batch, joined concurrently by 4 processes."""
    runs = []
    for i in range(4):
        marker_dir = tmp_path / f"run-{i}"
        marker_dir.mkdir()
        wf = Workflow.create("join", data={"marker_dir": str(marker_dir)})
        runs.append((wf.start().id, marker_dir))
    done = wait([r[0] for r in runs], timeout=300)
    for wf, (_, marker_dir) in zip(done, runs):
        assert wf.status == "success"
        join = wf.tasks[-1]
        assert (marker_dir / "join").read_text() == "x"
        assert join.attempt == 1
        assert [h["status"] for h in join.history()].count("queued") == 1
        assert join.result == "join"
        members = [(marker_dir / f"member-{i}").read_text() for i in range(JOIN_WIDTH)]
        assert members == ["x"] * JOIN_WIDTH


def test_concurrent_create_with_the_same_key(app, clean):
    barrier = threading.Barrier(8)
    ids, errors = [], []

    def create():
        with app.app_context():
            try:
                barrier.wait()
                ids.append(Workflow.create("add-chain", key="same-key").id)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 1
    _db.session.rollback()
    assert WorkflowRun.query.filter_by(key="same-key").count() == 1
    assert TaskRun.query.count() == 3


#
# Child workflows
#
SPAWN_WIDTH = 1000
"""Children spawned and joined by one task in the stress test."""


def consistent_tree(root_id):
    """Check every run of a tree; return the number of runs checked."""
    runs = WorkflowRun.query.filter_by(root_id=root_id).all()
    for run in runs:
        assert check_workflow(run.id) == [], run.name
    return len(runs)


@pytest.mark.parametrize("at_once", [False, True], ids=["one-by-one", "at-once"])
@pytest.mark.parametrize("batch", range(3))
def test_a_join_of_1000_children_fires_exactly_once(
    worker, clean, tmp_path, batch, at_once
):
    """One task spawns 1,000 children while 3 more processes run them."""
    data = {"width": SPAWN_WIDTH, "marker_dir": str(tmp_path), "at_once": at_once}
    wf = Workflow.create("spawn-wide", data=data).start()
    (wf,) = wait([wf.id], timeout=600)
    assert wf.status == "success", [(t.name, t.status, t.error) for t in wf.tasks]
    spawner, after = wf.tasks
    assert spawner.result == list(range(SPAWN_WIDTH))
    assert [h["status"] for h in spawner.history()].count("success") == 1
    assert [h["status"] for h in after.history()].count("queued") == 1
    assert (tmp_path / "parent").read_text() == "x"
    assert (tmp_path / "after").read_text() == "x"
    for i in range(SPAWN_WIDTH):
        assert (tmp_path / f"child-{i}").read_text() == "x", i
    assert consistent_tree(wf.id) == SPAWN_WIDTH + 1


@pytest.mark.parametrize("batch", range(3))
def test_a_stop_excludes_children_finishing_side_by_side(
    worker, clean, tmp_path, batch
):
    """Stop a tree while its children finish under the root's share lock.

    The stop holds the root ``FOR UPDATE``: no child succeeds after it, and
    the join never fires. (With 400 children, this stop once ran for more
    than ten minutes: it stopped the children one by one, a session flush
    each; see ``test_stopping_a_tree_flushes_once_however_many_children``.)
    """
    data = {"width": 400, "marker_dir": str(tmp_path), "at_once": True}
    wf = Workflow.create("spawn-wide", data=data).start()
    deadline = time.monotonic() + 120
    while True:
        _db.session.rollback()
        done = WorkflowRun.query.filter_by(parent_id=wf.id, status="success").count()
        if done >= 20:
            break
        assert time.monotonic() < deadline, "the children never finished"
        time.sleep(0.05)
    Workflow.get(wf.id).stop()
    (wf,) = wait([wf.id])
    assert wf.status == "cancelled"
    spawner, after = wf.tasks
    assert (spawner.status, after.status) == ("cancelled", "cancelled")
    assert not (tmp_path / "after").exists()
    time.sleep(2)  # nothing a revoked attempt reports late changes that
    _db.session.rollback()
    kids = WorkflowRun.query.filter_by(parent_id=wf.id).all()
    assert len(kids) == 400
    stopped_at = spawner.model.finished_at
    for kid in kids:
        (task,) = kid.tasks
        assert (kid.status, task.status) in {
            ("success", "success"),
            ("cancelled", "cancelled"),
        }, kid.id
        if kid.status == "success":
            assert kid.finished_at <= stopped_at, kid.id
    assert 20 <= sum(k.status == "success" for k in kids) < 400
    assert consistent_tree(wf.id) == 401


def test_a_retried_parent_gets_its_finished_children_back(worker, clean, tmp_path):
    wf = Workflow.create(
        "spawn-then-retry",
        data={"qualities": ["a", "b", "c"], "marker_dir": str(tmp_path)},
    ).start()
    (wf,) = wait([wf.id], timeout=180)
    assert wf.status == "success", [(t.name, t.status, t.error) for t in wf.tasks]
    assert wf.result == ["1@a", "1@b", "1@c"]
    assert (tmp_path / "parent").read_text() == "2"  # the body ran twice
    for q in ("a", "b", "c"):  # each child ran once
        assert (tmp_path / f"child-{q}").read_text() == "x"
    assert WorkflowRun.query.filter_by(parent_id=wf.id).count() == 3
    assert consistent_tree(wf.id) == 4


def test_stopping_a_parent_stops_running_children(worker, clean):
    wf = Workflow.create(
        "spawn-each",
        data={"definition": "slow", "items": [{"seconds": 30}, {"seconds": 31}]},
    ).start()
    deadline = time.monotonic() + 60
    while True:
        _db.session.rollback()
        running = TaskRun.query.filter(
            TaskRun.workflow_id != wf.id, TaskRun.status == "running"
        ).count()
        if running == 2:
            break
        assert time.monotonic() < deadline, "the children never ran"
        time.sleep(0.2)
    Workflow.get(wf.id).stop()
    (wf,) = wait([wf.id])
    assert wf.status == "cancelled"
    kids = wf.children()[0]
    assert [k.status for k in kids] == ["cancelled", "cancelled"]
    time.sleep(2)  # nothing a revoked attempt reports late changes that
    _db.session.rollback()
    assert {t.status for k in wf.children()[0] for t in k.tasks} == {"cancelled"}
    assert consistent_tree(wf.id) == 3


def test_max_runs_holds_with_a_real_worker(worker, clean):
    """10 runs of a max_runs=2 definition on 4 processes: never 3 at once."""
    runs = [
        Workflow.create("two-at-a-time", data={"seconds": 0.5, "video_id": i})
        for i in range(10)
    ]
    for run in runs:
        run.start()
    done = wait([r.id for r in runs], timeout=120)
    assert [r.status for r in done] == ["success"] * 10
    events = sorted(
        [(r.model.started_at, 1) for r in done]
        + [(r.model.finished_at, -1) for r in done]
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2
    # Admitted in creation order.
    order = sorted(done, key=lambda r: r.model.started_at)
    assert [r.data["video_id"] for r in order] == list(range(10))


def test_a_spawner_killed_mid_spawn_resumes_without_duplicates(worker, clean, tmp_path):
    """SIGKILL a task half-way through its spawns: attempt 2 reuses the first half."""
    qualities = ["a", "b", "c", "d"]
    wf = Workflow.create(
        "spawn-and-hang", data={"qualities": qualities, "marker_dir": str(tmp_path)}
    ).start()
    marker = tmp_path / "started"
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    time.sleep(2.5)  # the task's lease is 2 seconds
    assert dispatch.requeue_stale(older_than=3600) >= 1
    (wf,) = wait([wf.id], timeout=120)
    assert wf.status == "success", [(t.status, t.error) for t in wf.tasks]
    assert wf.tasks[0].attempt == 2
    assert wf.result == [f"1@{q}" for q in qualities]
    assert WorkflowRun.query.filter_by(parent_id=wf.id).count() == 4
    for q in qualities:  # the children spawned before the kill ran once
        assert (tmp_path / f"child-{q}").read_text() == "x"
    assert consistent_tree(wf.id) == 5


@pytest.mark.parametrize("batch", range(3))
def test_workflows_grow_their_graph_on_real_workers(worker, clean, tmp_path, batch):
    """populate() and callbacks through the root's orchestrator, 4 processes."""
    archs = [f"arch-{n:02d}" for n in range(30)]
    regression = Workflow.create(
        "regression", data={"architectures": archs, "marker_dir": str(tmp_path)}
    ).start()
    others = [
        Workflow.create("grow-from-callback").start(),
        Workflow.create("regression-inside").start(),
    ]
    runs = wait([regression.id] + [o.id for o in others], timeout=180)
    assert [r.status for r in runs] == ["success"] * 3, [
        (t.name, t.status, t.error) for r in runs for t in r.tasks
    ]
    regression, grown, inside = runs
    builds = [t for t in regression.tasks if t.name.endswith(".build")]
    assert sorted(t.key for t in builds) == archs
    assert all(t.attempt == 1 for t in builds)
    assert regression.result == {"compare": {"builds": 30}}
    assert regression.tasks[-1].result == "published " + ",".join(archs)
    assert (tmp_path / "compare").read_text() == "x"  # the callback ran once
    # No two passes of the root overlapped.
    spans = sorted(
        tuple(map(float, line.split()))
        for line in (tmp_path / "populate").read_text().splitlines()
    )
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    root = _db.session.get(WorkflowRun, regression.id)
    assert root.orchestrations < root.orchestration_requests  # coalesced
    assert grown.result == 3 and inside.result == {"compare": {"builds": 1}}
    assert consistent_tree(inside.id) == 2


#
# Delegated tasks
#
def farm_job(farm_dir, attempt=1, timeout=60):
    """The job the worker's stand-in farm wrote for an attempt."""
    path = farm_dir / f"job-{attempt}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the task never delegated"
        time.sleep(0.1)
    return json.loads(path.read_text())


def held_farm_run(farm_dir, video_id):
    """Start a "farm" run whose body holds until ``farm_dir/release`` exists."""
    wf = Workflow.create(
        "farm", data={"video_id": video_id, "farm_dir": str(farm_dir), "hold": True}
    ).start()
    job = farm_job(farm_dir)
    _db.session.rollback()
    assert Task.get(job["task_id"]).status == "running"  # the body holds
    return wf, job


def test_a_completion_before_the_body_returns_is_applied_once(
    worker, clean, client, tmp_path
):
    wf, job = held_farm_run(tmp_path, 5)
    res = post(client, job)
    assert res.status_code == 200 and res.json["status"] == "success"
    (tmp_path / "release").touch()
    (wf,) = wait([wf.id])
    assert wf.status == "success"
    assert wf.result == {"video_id": 5, "published": DONE["result"]}
    time.sleep(1)  # the body returns its ticket: that changes nothing
    _db.session.rollback()
    assert statuses(job["task_id"]) == ["pending", "queued", "running", "success"]
    assert [t.status for t in Workflow.get(wf.id).tasks] == ["success"] * 2
    assert statuses(wf.tasks[1].id).count("queued") == 1


@pytest.mark.parametrize("early", [True, False], ids=["running", "waiting"])
def test_eight_concurrent_completions_make_one_transition(
    app, worker, clean, tmp_path, early
):
    wf, job = held_farm_run(tmp_path, 6)
    if not early:
        (tmp_path / "release").touch()
        wait_task(job["task_id"], "waiting")
    answers = complete_at_once(app, job)
    (tmp_path / "release").touch()
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json["status"] for a in answers} == {"success"}
    (wf,) = wait([wf.id])
    assert wf.status == "success"
    time.sleep(1)  # a held body returns its ticket: that changes nothing
    _db.session.rollback()
    history = statuses(job["task_id"])
    assert history.count("success") == 1 and history[-1] == "success"
    assert ("waiting" in history) is not early
    assert statuses(wf.tasks[1].id).count("queued") == 1
