# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Child workflows: spawn, join, reuse on retry and restart, stop, sub-workflows."""

import threading
from contextlib import contextmanager

import pytest
from invenio_db import db as _db
from sqlalchemy import event
from sqlalchemy_continuum import version_class

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.api import Task
from invenio_wtflow.engine import children, orchestrator
from invenio_wtflow.engine.check import check_workflow
from invenio_wtflow.engine.status import default_status
from invenio_wtflow.errors import InvalidStateError, SpawnConflictError
from invenio_wtflow.models import TaskDependency, TaskRun, WorkflowRun

from .example_tasks import transcode_one
from .test_engine_orchestrator import count_statements


def marks(path, name):
    """How many times a mark was written."""
    target = path / name
    return len(target.read_text()) if target.exists() else 0


def child_runs(parent):
    """The child runs of a run, in spawn order."""
    return Workflow.get(parent.id).children(size=100)[0]


def consistent(*runs):
    """Assert the consistency check finds nothing in each run."""
    for run in runs:
        assert check_workflow(run.id) == [], run


def test_spawned_children_are_joined_in_spawn_order(app, db, tmp_path):
    wf = Workflow.create(
        "transcode-all",
        data={"video_id": 7, "qualities": ["480p", "720p", "1080p"]},
    ).start()
    assert wf.status == "success"
    spawner, summary = wf.tasks
    assert spawner.result == ["7@480p", "7@720p", "7@1080p"]
    assert wf.result == {"count": 3, "results": spawner.result}
    kids = child_runs(wf)
    assert [k.data["quality"] for k in kids] == ["480p", "720p", "1080p"]
    assert [k.spawn_index for k in kids] == [0, 1, 2]
    for kid in kids:
        assert kid.status == "success"
        assert kid.parent_id == wf.id
        assert kid.root_id == wf.id
        assert kid.parent_task_id == spawner.id
        assert kid.parent.id == wf.id
    statuses = [h["status"] for h in spawner.history()]
    assert statuses[-2:] == ["waiting", "success"]
    consistent(wf, *kids)


def test_the_task_waits_without_holding_a_worker(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    spawner = Workflow.get(wf.id).tasks[0]
    assert spawner.status == "waiting"
    assert spawner.model.remaining == 2
    assert Workflow.get(wf.id).status == "waiting"  # on its children, queued
    assert len(broker.messages) == 2
    consistent(wf)

    broker.deliver(lambda m: m is broker.messages[0])
    spawner = Task.get(spawner.id)
    assert (spawner.status, spawner.model.remaining) == ("waiting", 1)
    assert spawner.message == "Waiting for child workflows: 1 of 2 finished."
    assert spawner.progress == 0.5
    consistent(wf)

    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert Task.get(spawner.id).result == ["1@a", "1@b"]


def test_a_finishing_child_does_not_read_the_list_of_joined_children(app, db, broker):
    """On PostgreSQL the database finds the child among them and counts them."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("elsewhere the list is read and searched in Python")
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b", "c"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    with count_statements(db) as statements:
        broker.deliver(lambda m: m is broker.messages[0])
    assert not [s for s in statements if "wtflow_task.joined" in s]
    spawner = Workflow.get(wf.id).tasks[0]
    assert (spawner.status, spawner.model.remaining) == ("waiting", 2)
    broker.deliver_all()
    assert Task.get(spawner.id).result == ["1@a", "1@b", "1@c"]


def test_children_finish_side_by_side_and_the_last_completes_the_join(
    app, db, broker, exclusive_calls
):
    """On PostgreSQL only the last child takes the root lock (``succeed``)."""
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b", "c"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    exclusive_calls.clear()
    spawner = Workflow.get(wf.id).tasks[0]
    kids = child_runs(wf)
    for done, child in enumerate(kids[:2], start=1):
        broker.deliver(lambda m: m.task_run_id == str(child.tasks[0].id))
        assert Workflow.get(child.id).status == "success"
        assert Task.get(spawner.id).model.remaining == 3 - done
        assert Task.get(spawner.id).message == (
            f"Waiting for child workflows: {done} of 3 finished."
        )
    on_postgresql = db.engine.dialect.name == "postgresql"
    assert exclusive_calls == (
        [] if on_postgresql else [str(k.tasks[0].id) for k in kids[:2]]
    )
    broker.deliver(lambda m: m.task_run_id == str(kids[2].tasks[0].id))
    assert exclusive_calls[-1] == str(kids[2].tasks[0].id)
    assert Task.get(spawner.id).result == ["1@a", "1@b", "1@c"]
    broker.deliver_all()
    assert Workflow.get(wf.id).result == {
        "count": 3,
        "results": ["1@a", "1@b", "1@c"],
    }
    run_versions = version_class(WorkflowRun)
    for child in kids:
        versions = run_versions.query.filter_by(id=child.id).all()
        assert versions[-1].status == "success"
    consistent(wf, *kids)


def test_children_with_their_own_status_rule_finish_under_the_root_lock(
    app, db, broker, exclusive_calls
):
    class Strict(Workflow):
        definition = transcode_one

        def compute_status(self, counts):
            """A bad quality fails the run, even transcoded."""
            status = default_status(counts)
            if status.value == "success" and self.data.get("quality") == "bad":
                return "failure"
            return status

    current_wtflow.register("strict-transcode", Strict)
    items = [{"video_id": 1, "quality": q} for q in ("good", "bad", "fine")]
    wf = Workflow.create(
        "spawn-each", data={"definition": "strict-transcode", "items": items}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))
    exclusive_calls.clear()
    kids = child_runs(wf)
    broker.deliver(lambda m: m.task_run_id == str(kids[1].tasks[0].id))
    # The rule, not the default one, decides the finished child's status.
    assert exclusive_calls == [str(kids[1].tasks[0].id)]
    assert Workflow.get(kids[1].id).status == "failure"
    assert Workflow.get(wf.id).status == "failure"
    consistent(wf, *kids)


def test_a_join_of_finished_children_completes_at_once(app, db):
    wf = Workflow.create("transcode-all", data={"video_id": 1, "qualities": []}).start()
    assert wf.status == "success"
    assert wf.result == {"count": 0, "results": []}


def test_spawning_the_same_identity_returns_the_same_child(app, db):
    same = {"video_id": 1, "quality": "a"}
    wf = Workflow.create("spawn-by-key", data={"first": same, "second": same})
    wf.start()
    assert wf.status == "success"
    assert wf.result == ["1@a"]
    assert WorkflowRun.query.filter_by(parent_id=wf.id).count() == 1


def test_a_key_with_other_data_is_a_conflict(app, db):
    wf = Workflow.create(
        "spawn-by-key",
        data={
            "first": {"video_id": 1, "quality": "a"},
            "second": {"video_id": 1, "quality": "b"},
        },
    ).start()
    assert wf.status == "failure"
    task = wf.tasks[0]
    assert task.error.startswith("SpawnConflictError: ")
    assert "key 'only'" in task.error
    # The first child was committed; the conflicting spawn wrote nothing, and
    # the first child was stopped with its failed parent task.
    kids = child_runs(wf)
    assert [k.data["quality"] for k in kids] == ["a"]
    consistent(wf, *kids)


def test_identity_hashes_name_and_canonical_data():
    key, digest = children.identity("x", {"b": 1, "a": [1, 2]})
    assert key == digest == children.identity("x", {"a": [1, 2], "b": 1})[1]
    assert children.identity("y", {"b": 1, "a": [1, 2]})[0] != key
    assert children.identity("x", {"a": 1}, key="k") == (
        "k",
        children.identity("x", {"a": 1})[1],
    )


def test_join_refuses_runs_the_task_did_not_spawn(app, db):
    other = Workflow.create("add-chain")
    wf = Workflow.create("join-foreign", data={"other_id": str(other.id)}).start()
    assert wf.status == "failure"
    assert "was not spawned by this task" in wf.tasks[0].error
    assert Workflow.get(other.id).status == "pending"


def test_a_failed_child_fails_the_join_and_stops_its_siblings(app, db, broker):
    wf = Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": ["a", "broken", "c"]},
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    kids = child_runs(wf)
    broken = kids[1]
    broker.deliver(lambda m: m.task_run_id == str(broken.tasks[0].id))

    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    spawner, summary = wf.tasks
    assert spawner.status == "failure"
    assert spawner.error.startswith("ChildWorkflowError: child workflow transcode-one")
    assert summary.status == "cancelled"
    assert [k.status for k in child_runs(wf)] == ["cancelled", "failure", "cancelled"]
    # The siblings' attempts were revoked: delivering them changes nothing.
    broker.deliver_all()
    assert [k.status for k in child_runs(wf)] == ["cancelled", "failure", "cancelled"]
    consistent(wf, *child_runs(wf))


def test_return_exceptions_collects_failures(app, db):
    wf = Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": ["a", "broken"], "gather": True},
    ).start()
    assert wf.status == "success"
    ok, failed = wf.tasks[0].result
    assert ok == "1@a"
    assert failed["exc_type"] == "ChildWorkflowError"
    assert failed["status"] == "failure"
    assert failed["workflow_id"] == str(child_runs(wf)[1].id)
    assert "cannot transcode broken" in failed["exc_message"]


def test_restarting_the_spawning_task_reuses_successful_children(app, db, tmp_path):
    wf = Workflow.create(
        "transcode-all",
        data={
            "video_id": 1,
            "qualities": ["a", "broken", "c"],
            "marker_dir": str(tmp_path),
            "gather": True,
        },
    ).start()
    assert wf.status == "success"
    before = [k.id for k in child_runs(wf)]
    assert [marks(tmp_path, f"child-{q}") for q in ("a", "broken", "c")] == [1, 1, 1]

    wf.tasks[0].restart()
    assert marks(tmp_path, "parent") == 2
    # The successful children were reused; the failed one ran again.
    assert [marks(tmp_path, f"child-{q}") for q in ("a", "broken", "c")] == [1, 2, 1]
    assert [k.id for k in child_runs(wf)] == before
    assert Workflow.get(wf.id).status == "success"
    consistent(wf, *child_runs(wf))


def test_stopping_the_parent_stops_every_descendant(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    assert [k.status for k in child_runs(wf)] == ["running", "running"]

    Workflow.get(wf.id).stop()
    wf = Workflow.get(wf.id)
    assert wf.status == "cancelled"
    assert [t.status for t in wf.tasks] == ["cancelled", "cancelled"]
    kids = child_runs(wf)
    assert [k.status for k in kids] == ["cancelled", "cancelled"]
    assert all(t.status == "cancelled" for k in kids for t in k.tasks)
    broker.deliver_all()  # late deliveries of revoked attempts change nothing
    assert [k.status for k in child_runs(wf)] == ["cancelled", "cancelled"]
    assert Workflow.get(wf.id).status == "cancelled"
    consistent(wf, *kids)


@contextmanager
def count_flushes():
    """List the session's flushes (each flush looks at the whole session)."""
    flushes = []

    def record(session, context, instances):
        flushes.append(len(session.dirty))  # objects to write, for a failure

    event.listen(_db.session, "before_flush", record)
    try:
        yield flushes
    finally:
        event.remove(_db.session, "before_flush", record)


def stopped_wide_tree(db, broker, tmp_path, width):
    """Stop a tree whose task joins ``width`` queued children.

    :returns: the run, and the statements and session flushes of the stop.
    """
    data = {"width": width, "marker_dir": str(tmp_path), "at_once": True}
    wf = Workflow.create("spawn-wide", data=data).start()
    broker.deliver(lambda m: m.name.endswith("spawn_wide"))
    assert len(child_runs(wf)) == width
    with count_flushes() as flushes, count_statements(db) as statements:
        Workflow.get(wf.id).stop()
    return Workflow.get(wf.id), statements, flushes


def test_stopping_a_tree_flushes_once_however_many_children(app, db, broker, tmp_path):
    narrow, narrow_statements, narrow_flushes = stopped_wide_tree(
        db, broker, tmp_path, 5
    )
    wide, wide_statements, wide_flushes = stopped_wide_tree(db, broker, tmp_path, 20)
    # A flush per child made a stop quadratic (each flush looks at the whole
    # session): 54 s for 800 children. Now one flush cancels every task.
    assert len(narrow_flushes) == len(wide_flushes) == 1
    # Beyond that, each child costs only its status.
    assert len(wide_statements) - len(narrow_statements) == 20 - 5
    for wf in (narrow, wide):
        assert (wf.status, wf.message) == ("cancelled", "Stopped.")
        assert [t.status for t in wf.tasks] == ["cancelled", "cancelled"]
        assert {t.message for t in wf.tasks} == {"Cancelled: the workflow was stopped."}
        for kid in child_runs(wf):
            (task,) = kid.tasks
            assert (kid.status, task.status) == ("cancelled", "cancelled")
            assert task.message == "Cancelled: a parent workflow was stopped."
        consistent(wf, *child_runs(wf))
    broker.deliver_all()  # the revoked attempts, delivered late, change nothing
    assert all(k.status == "cancelled" for k in child_runs(wide))
    assert not (tmp_path / "child-0").exists()


def test_spawning_stopped_children_again_flushes_once_however_many(
    app, db, broker, tmp_path
):
    def respawned(width):
        """Stop, restart and finish a wide tree; the new spawn's flushes."""
        marks_dir = tmp_path / str(width)
        marks_dir.mkdir()
        wf, _, _ = stopped_wide_tree(db, broker, marks_dir, width)
        Workflow.get(wf.id).restart()
        with count_flushes() as flushes:
            assert broker.deliver(lambda m: m.name.endswith("spawn_wide")) == 1
        kids = child_runs(wf)
        assert len(kids) == width
        for kid in kids:  # the same runs, reset and queued again
            (task,) = kid.tasks
            assert (kid.status, task.status, task.attempt) == ("running", "queued", 2)
        consistent(wf, *kids)
        broker.deliver_all()  # the revoked first attempts change nothing
        wf = Workflow.get(wf.id)
        assert wf.status == "success"
        assert wf.tasks[0].result == list(range(width))
        ran = [marks(marks_dir, f"child-{i}") for i in range(width)]
        assert ran == [1] * width
        return flushes

    # Restarting each child alone flushed the session once per child; now
    # the claim, the spawn (one flush resets the children, one queues them),
    # the join and the versions.
    assert len(respawned(5)) == len(respawned(20)) == 5


def test_each_level_of_a_stopped_tree_records_why(app, db, broker):
    inner = {"video_id": 1, "qualities": ["a", "b"]}
    data = {"definition": "transcode-all", "items": [inner]}
    wf = Workflow.create("spawn-each", data=data).start()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))  # spawns C
    broker.deliver(lambda m: m.name.endswith("transcode_all"))  # C spawns G1, G2
    (child,) = child_runs(wf)
    grandchildren = child_runs(child)
    assert [g.status for g in grandchildren] == ["running", "running"]

    wf.tasks[0].stop()
    tasks = Workflow.get(child.id).tasks  # transcode_all, then count_results
    assert [t.status for t in tasks] == ["cancelled", "cancelled"]
    assert {t.message for t in tasks} == {"Cancelled: its parent task was cancelled."}
    for grandchild in child_runs(child):
        (task,) = grandchild.tasks
        assert (grandchild.status, task.status) == ("cancelled", "cancelled")
        assert task.message == "Cancelled: a parent workflow was stopped."
    assert Workflow.get(wf.id).status == "cancelled"
    consistent(wf, child, *grandchildren)


def test_limited_children_spawned_again_wait_for_their_slots(app, db, broker):
    items = [{"video_id": i} for i in range(3)]
    wf = Workflow.create(
        "spawn-each", data={"definition": "one-at-a-time", "items": items}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))
    Workflow.get(wf.id).stop()
    assert {k.status for k in child_runs(wf)} == {"cancelled"}

    Workflow.get(wf.id).restart()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))
    kids = child_runs(wf)
    assert sorted(k.status for k in kids) == ["pending", "pending", "running"]
    assert all(k.model.slot_requested_at for k in kids if k.status == "pending")
    broker.deliver_all()
    wf = Workflow.get(wf.id)
    assert wf.status == "success"
    assert wf.tasks[0].result == [0, 1, 2]
    consistent(wf, *child_runs(wf))


def test_stopping_a_joining_task_stops_its_children(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    wf.tasks[0].stop()
    assert [k.status for k in child_runs(wf)] == ["cancelled"]
    assert Workflow.get(wf.id).status == "cancelled"


def test_a_stopped_child_fails_the_join(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    child_runs(wf)[0].stop()
    wf = Workflow.get(wf.id)
    assert wf.status == "failure"
    assert "is cancelled" in wf.tasks[0].error
    assert [k.status for k in child_runs(wf)] == ["cancelled", "cancelled"]


def test_restarting_a_joined_child_keeps_the_join_waiting(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a", "b"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    first = child_runs(wf)[0]
    broker.deliver(lambda m: m.task_run_id == str(first.tasks[0].id))
    spawner = Workflow.get(wf.id).tasks[0]
    assert spawner.model.remaining == 1

    Workflow.get(first.id).restart()  # finished -> running again
    assert Task.get(spawner.id).model.remaining == 2
    consistent(wf, first)
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert Task.get(spawner.id).result == ["1@a", "1@b"]


def test_a_stale_attempt_cannot_spawn(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a"]}
    ).start()
    task = wf.tasks[0].model
    # (The queued attempt itself would be taken for one whose claim was lost.)
    with pytest.raises(InvalidStateError, match="no longer running"):
        orchestrator.atomic(
            children.spawn,
            task.id,
            "an earlier attempt",
            0,
            "transcode-one",
            current_wtflow.get_workflow_class("transcode-one").compile(),
            {"video_id": 1, "quality": "a"},
        )
    assert WorkflowRun.query.filter_by(parent_id=wf.id).count() == 0


def test_concurrent_spawns_of_one_identity_make_one_child(app, clean, broker):
    wf = Workflow.create("transcode-all", data={"video_id": 1, "qualities": []}).start()
    task = wf.tasks[0].model
    task_id, celery_id = task.id, task.celery_id
    orchestrator.atomic(orchestrator.claim, task_id, celery_id)
    graph = current_wtflow.get_workflow_class("transcode-one").compile()
    data = {"video_id": 1, "quality": "a"}
    barrier = threading.Barrier(8)
    results, errors = [], []

    def spawn():
        with app.app_context():
            try:
                barrier.wait()
                child_id, created = orchestrator.atomic(
                    children.spawn, task_id, celery_id, 0, "transcode-one", graph, data
                )
                results.append((child_id, created))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=spawn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({child_id for child_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert WorkflowRun.query.filter_by(parent_task_id=task_id).count() == 1


def test_the_unique_constraint_backs_the_identity(app, db):
    wf = Workflow.create("transcode-all", data={"video_id": 1, "qualities": []})
    task_id = wf.tasks[0].id
    graph = current_wtflow.get_workflow_class("transcode-one").compile()
    link = {
        "root_id": wf.id,
        "parent_id": wf.id,
        "parent_task_id": task_id,
        "spawn_key": "k",
        "spawn_digest": "d",
        "spawn_index": 0,
    }
    first, created = orchestrator.atomic(
        orchestrator.create, "transcode-one", graph, {}, parent=link
    )
    assert created
    # Bypass the lookup: the constraint itself refuses a second row.
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with db.session.begin_nested():
            db.session.add(
                WorkflowRun(name="transcode-one", data={}, status="pending", **link)
            )
            db.session.flush()


def test_a_subworkflow_node_gives_the_child_result(app, db):
    wf = Workflow.create("with-subworkflow").start()
    assert wf.status == "success"
    assert wf.result == 61
    node = wf.tasks[1]
    assert node.name == "invenio_wtflow.subworkflow"
    (child,) = child_runs(wf)
    assert child.name == "add-chain"
    assert child.result == 60 == node.result
    consistent(wf, child)


def test_stopped_children_are_restarted_when_the_workflow_restarts(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    Workflow.get(wf.id).stop()
    (child,) = child_runs(wf)
    assert child.status == "cancelled"

    Workflow.get(wf.id).restart()
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert [k.id for k in child_runs(wf)] == [child.id]
    assert child_runs(wf)[0].status == "success"
    assert TaskRun.query.filter_by(workflow_id=child.id).one().attempt == 2


def test_a_spawn_conflict_is_a_409_over_rest(app):
    from invenio_wtflow.errors import to_rest_error

    error = to_rest_error(SpawnConflictError("key 'k' names other data"))
    assert error.code == 409
    assert error.get_body() and "key 'k' names other data" in error.get_body()


def claimed_spawner(broker):
    """A running task that the test spawns from directly: ``(task_id, celery_id)``."""
    wf = Workflow.create("transcode-all", data={"video_id": 1, "qualities": []})
    wf.start()
    task = wf.tasks[0].model
    orchestrator.atomic(orchestrator.claim, task.id, task.celery_id)
    return task.id, task.celery_id


def spawn_now(spawner, name, data):
    """Spawn ``name`` from the claimed task; return ``(child id, created)``."""
    graph = current_wtflow.get_workflow_class(name).compile()
    return orchestrator.atomic(children.spawn, *spawner, 0, name, graph, data)


def test_spawning_again_a_child_waiting_for_a_slot_returns_it(app, db, broker):
    spawner = claimed_spawner(broker)
    first, _ = spawn_now(spawner, "one-at-a-time", {"video_id": 1})
    second, created = spawn_now(spawner, "one-at-a-time", {"video_id": 2})
    assert created and Workflow.get(second).model.slot_requested_at is not None
    again, created = spawn_now(spawner, "one-at-a-time", {"video_id": 2})
    assert (again, created) == (second, False)
    assert [Workflow.get(i).status for i in (first, second)] == ["running", "pending"]


def test_spawning_renews_the_lease(app, db, broker):
    from datetime import timedelta

    from invenio_wtflow.models import utcnow

    spawner = claimed_spawner(broker)
    task = TaskRun.query.get(spawner[0])
    task.lease_expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    spawn_now(spawner, "transcode-one", {"video_id": 1, "quality": "a"})
    assert TaskRun.query.get(spawner[0]).lease_expires_at > utcnow()


def test_stop_reaches_grandchildren_under_finished_children(app, db, broker):
    inner = {"definition": "transcode-one", "items": [{"video_id": 1, "quality": "g"}]}
    root = Workflow.create(
        "spawn-detached", data={"definition": "spawn-detached", "items": [inner]}
    ).start()
    broker.deliver(lambda m: True)  # the root's task spawns C and succeeds
    broker.deliver(lambda m: m.name.endswith("spawn_detached"))  # C spawns G
    (child,) = child_runs(root)
    (grandchild,) = child_runs(child)
    assert (Workflow.get(root.id).status, child.status) == ("success", "success")
    assert grandchild.status == "running"  # its task is queued

    Workflow.get(root.id).stop()
    assert Workflow.get(grandchild.id).status == "cancelled"
    with pytest.raises(InvalidStateError, match="nothing to stop"):
        Workflow.get(root.id).stop()
    consistent(root, child, grandchild)


def test_a_failed_child_with_work_left_is_stopped_with_the_join(app, db, broker):
    wf = Workflow.create(
        "spawn-each", data={"definition": "half-failing", "items": [{}]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))
    (child,) = child_runs(wf)
    broker.deliver(lambda m: m.task_run_id == str(child.tasks[0].id))  # boom
    assert Workflow.get(wf.id).tasks[0].status == "failure"
    assert [t.status for t in Workflow.get(child.id).tasks] == ["failure", "cancelled"]
    consistent(wf, child)


def test_a_join_accepts_ids_in_any_spelling(app, db):
    wf = Workflow.create("join-hex").start()
    assert wf.status == "success"
    assert wf.result == ["1@hex"]


def test_a_child_does_not_run_again_under_a_parent_task_that_gave_up(app, db, broker):
    wf = Workflow.create(
        "transcode-all", data={"video_id": 1, "qualities": ["a"]}
    ).start()
    broker.deliver(lambda m: m.name.endswith("transcode_all"))
    Workflow.get(wf.id).stop()
    (child,) = child_runs(wf)
    with pytest.raises(InvalidStateError, match="restart that task instead"):
        child.restart()
    with pytest.raises(InvalidStateError, match="restart that task instead"):
        child.tasks[0].restart()
    assert Workflow.get(child.id).status == "cancelled"


#
# Spawning many children at once
#
def test_spawn_many_spawns_and_joins_in_order(app, db, broker):
    items = [{"video_id": 3, "quality": q} for q in ("a", "b", "c")]
    wf = Workflow.create(
        "spawn-batch", data={"definition": "transcode-one", "items": items}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_batch"))
    # Every child exists, started, before any of them runs.
    kids = child_runs(wf)
    assert [k.data["quality"] for k in kids] == ["a", "b", "c"]
    assert [k.spawn_index for k in kids] == [0, 1, 2]
    assert [k.status for k in kids] == ["running"] * 3
    assert len(broker.messages) == 3
    broker.deliver_all()
    wf = Workflow.get(wf.id)
    assert wf.status == "success" and wf.result == ["3@a", "3@b", "3@c"]
    consistent(wf, *child_runs(wf))


def spawn_many_now(spawner, name, items):
    """Spawn ``(data, key)`` items from the claimed task; return what it returns."""
    graph = current_wtflow.get_workflow_class(name).compile()
    return orchestrator.atomic(
        children.spawn_many, *spawner, 0, name, graph, list(items)
    )


def test_spawn_many_costs_the_same_statements_for_ten_children_or_forty(
    app, db, broker
):
    spawner = claimed_spawner(broker)

    def cost(first, last):
        items = [({"video_id": i}, None) for i in range(first, last)]
        with count_statements(db) as statements:
            spawned = spawn_many_now(spawner, "encode-video", items)
        assert all(created for _, created in spawned)
        return len([s for s in statements if "SAVEPOINT" not in s])

    # One lock, one lookup of the existing children and one count, then the
    # runs, their tasks and their edges, inserted together; then the versions.
    assert cost(10, 50) == cost(0, 10)


def test_children_spawned_together_are_whole_and_versioned(app, db, broker):
    spawner = claimed_spawner(broker)
    spawned = spawn_many_now(
        spawner, "encode-video", [({"video_id": i}, None) for i in range(3)]
    )
    run_versions, task_versions = version_class(WorkflowRun), version_class(TaskRun)
    for index, (child_id, _) in enumerate(spawned):
        child = Workflow.get(child_id)
        assert child.model.spawn_index == index
        assert child.data == {"video_id": index}
        assert [t.status for t in child.tasks] == ["queued"] * 2 + ["pending"] * 2
        edges = TaskDependency.query.join(
            TaskRun, TaskRun.id == TaskDependency.task_id
        ).filter(TaskRun.workflow_id == child_id)
        assert edges.count() == 3
        assert run_versions.query.filter_by(id=child_id).one().operation_type == 0
        assert task_versions.query.filter_by(workflow_id=child_id).count() == 4
        consistent(child)
    assert len(broker.messages) == 1 + 2 * 3  # the spawner's, two tasks a child


def test_runs_that_may_collide_are_not_inserted_together(app, db):
    graph = current_wtflow.get_workflow_class("encode-video").compile()
    with pytest.raises(ValueError, match="cannot collide"):
        orchestrator.create(
            None, "encode-video", graph, {}, key="k", inserts=orchestrator.Inserts()
        )
    assert WorkflowRun.query.count() == 0


def test_spawn_many_reuses_children_and_names_one_child_once(app, db, broker):
    spawner = claimed_spawner(broker)
    a, b = {"video_id": 1, "quality": "a"}, {"video_id": 1, "quality": "b"}
    first = spawn_many_now(spawner, "transcode-one", [(a, None), (a, None)])
    assert first[0][0] == first[1][0]
    assert [created for _, created in first] == [True, False]
    # A retried parent spawning again gets its children back.
    again = spawn_many_now(spawner, "transcode-one", [(b, None), (a, None)])
    assert again[1] == (first[0][0], False) and again[0][1] is True
    assert WorkflowRun.query.filter_by(parent_task_id=spawner[0]).count() == 2


def test_a_conflict_in_spawn_many_spawns_nothing(app, db, broker):
    spawner = claimed_spawner(broker)
    published = len(broker.messages)
    a, b = {"video_id": 1, "quality": "a"}, {"video_id": 1, "quality": "b"}
    with pytest.raises(SpawnConflictError, match="key 'k'"):
        spawn_many_now(spawner, "transcode-one", [(a, "k"), (b, None), (b, "k")])
    assert WorkflowRun.query.filter_by(parent_task_id=spawner[0]).count() == 0
    assert len(broker.messages) == published


@pytest.mark.parametrize(
    "data, error",
    [
        ({"items": {"video_id": 1}}, "data must be a list"),
        ({"items": [{"video_id": 1}], "keys": ["a", "b"]}, "keys must be a list of 1"),
        ({"items": [{"video_id": 1}], "keys": [""]}, "key must be a non-empty"),
        ({"items": [[1]]}, "Workflow data"),
    ],
)
def test_spawn_many_refuses_bad_input(app, db, data, error):
    wf = Workflow.create(
        "spawn-batch", data={"definition": "transcode-one", **data}
    ).start()
    assert wf.status == "failure"
    assert wf.tasks[0].error.startswith("InvalidDataError: ")
    assert error in wf.tasks[0].error
    assert child_runs(wf) == []


def test_spawn_many_of_nothing_joins_at_once(app, db):
    wf = Workflow.create(
        "spawn-batch", data={"definition": "transcode-one", "items": []}
    ).start()
    assert wf.status == "success" and wf.result == []


def test_a_finishing_child_is_counted_without_an_orm_flush(app, db, broker):
    """Each child's success: Core statements only; progress once per percent."""
    width = 150
    items = [{"video_id": i, "quality": "q"} for i in range(width)]
    wf = Workflow.create(
        "spawn-batch", data={"definition": "transcode-one", "items": items}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_batch"))
    spawner_id = Workflow.get(wf.id).tasks[0].id
    flushes = []

    def record(*args):
        flushes.append(args)

    event.listen(db.session, "before_flush", record)
    try:
        broker.deliver(lambda m: m is not broker.messages[-1])
    finally:
        event.remove(db.session, "before_flush", record)
    assert flushes == []
    spawner = Task.get(spawner_id)
    assert (spawner.status, spawner.model.remaining) == ("waiting", 1)
    assert (
        spawner.message
        == f"Waiting for child workflows: {width - 1} of {width} finished."
    )
    assert spawner.progress == (width - 1) / width
    # Versioned when the percentage changes: 99 times for 149 children.
    shown = [
        h for h in spawner.history() if (h.get("message") or "").startswith("Waiting")
    ]
    assert len(shown) == 1 + 99  # the join's own, then each new percent
    broker.deliver_all()
    wf = Workflow.get(wf.id)
    assert wf.status == "success" and len(wf.result) == width
    consistent(wf)


def test_a_child_change_sees_what_its_transaction_did_to_the_joining_task(
    app, db, broker
):
    """A joining task cancelled earlier in the transaction is not counted."""
    items = [{"video_id": i, "quality": "q"} for i in range(3)]
    wf = Workflow.create(
        "spawn-batch", data={"definition": "transcode-one", "items": items}
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_batch"))
    spawner_id = Workflow.get(wf.id).tasks[0].id
    kid_id = child_runs(wf)[0].id

    def cancel_then_finish_a_child(uow):
        task = _db.session.get(TaskRun, spawner_id)
        task.status, task.message = "cancelled", "Cancelled by hand."
        child = _db.session.get(WorkflowRun, kid_id)
        child.status = "success"
        children.child_changed(uow, child)
        assert task.message == "Cancelled by hand."

    orchestrator.atomic(cancel_then_finish_a_child)
    task = _db.session.get(TaskRun, spawner_id)
    assert (task.status, task.message, task.remaining) == (
        "cancelled",
        "Cancelled by hand.",
        3,
    )
