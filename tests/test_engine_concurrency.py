# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Concurrency limits: ``max_runs`` per definition, optionally per key."""

import pytest

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.engine import concurrency
from invenio_wtflow.errors import InvalidDefinitionError, InvalidStateError
from invenio_wtflow.tasks import requeue_stale


def statuses(runs):
    """The current status of each run."""
    return [Workflow.get(r.id).status for r in runs]


def test_runs_beyond_the_limit_wait_and_start_in_creation_order(app, db, broker):
    runs = [Workflow.create("one-at-a-time", data={"video_id": i}) for i in range(3)]
    for run in reversed(runs):  # start order does not matter: creation order does
        run.start()
    assert statuses(runs) == ["pending", "pending", "running"]
    waiting = Workflow.get(runs[0].id)
    assert waiting.model.slot_requested_at is not None
    assert waiting.message.startswith("Waiting for a free slot: 1 run(s)")

    broker.deliver()  # the third run finishes: the first one created starts
    assert statuses(runs) == ["running", "pending", "success"]
    broker.deliver()
    assert statuses(runs) == ["success", "running", "success"]
    broker.deliver_all()
    assert statuses(runs) == ["success"] * 3
    assert all(Workflow.get(r.id).model.slot_requested_at is None for r in runs)


def test_a_failed_run_frees_its_slot(app, db, broker):
    runs = [Workflow.create("failing-one-at-a-time") for _ in range(2)]
    for run in runs:
        run.start()
    assert statuses(runs) == ["running", "pending"]
    broker.deliver()
    assert statuses(runs) == ["failure", "running"]


def test_a_stopped_run_frees_its_slot_and_a_waiting_one_can_be_stopped(app, db, broker):
    runs = [Workflow.create("one-at-a-time") for _ in range(3)]
    for run in runs:
        run.start()
    runs[1].stop()  # waiting: cancelled, takes no slot
    assert statuses(runs) == ["running", "cancelled", "pending"]
    runs[0].stop()
    assert statuses(runs) == ["cancelled", "cancelled", "running"]
    broker.deliver_all()
    assert statuses(runs) == ["cancelled", "cancelled", "success"]


def test_the_limit_applies_per_key(app, db, broker):
    runs = [
        Workflow.create("per-video", data={"video_id": video})
        for video in ("a", "b", "a")
    ]
    for run in runs:
        run.start()
    assert statuses(runs) == ["running", "running", "pending"]
    assert [Workflow.get(r.id).model.concurrency_key for r in runs] == ["a", "b", "a"]
    broker.deliver_all()
    assert statuses(runs) == ["success"] * 3


def test_the_start_data_decide_the_key(app, db, broker):
    first = Workflow.create("per-video", data={"video_id": "a"}).start()
    second = Workflow.create("per-video", data={"video_id": "a"})
    second.start(video_id="b")
    assert statuses([first, second]) == ["running", "running"]


def test_starting_a_waiting_run_again_is_a_conflict(app, db, broker):
    runs = [Workflow.create("one-at-a-time") for _ in range(2)]
    for run in runs:
        run.start()
    with pytest.raises(InvalidStateError, match="waits for a free slot"):
        runs[1].start()


def test_a_restarted_run_waits_for_a_slot_too(app, db, broker):
    first = Workflow.create("one-at-a-time").start()
    broker.deliver_all()
    second = Workflow.create("one-at-a-time").start()
    first.restart()
    assert statuses([first, second]) == ["pending", "running"]
    broker.deliver_all()
    assert statuses([first, second]) == ["success", "success"]


def test_the_sweeper_admits_when_the_admission_was_lost(app, db, broker, monkeypatch):
    runs = [Workflow.create("two-at-a-time") for _ in range(3)]
    for run in runs:
        run.start()
    assert statuses(runs) == ["running", "running", "pending"]
    # The process dies between the commit that frees a slot and the admission.
    monkeypatch.setattr(concurrency.AdmitOp, "on_post_commit", lambda self, uow: None)
    broker.deliver(lambda m: m is broker.messages[0])
    assert statuses(runs) == ["success", "running", "pending"]
    monkeypatch.undo()
    monkeypatch.setattr("invenio_wtflow.engine.dispatch._send", broker.send)
    assert requeue_stale() == 1
    assert statuses(runs) == ["success", "running", "running"]


def test_spawned_children_respect_the_limit(app, db, broker):
    wf = Workflow.create(
        "spawn-each",
        data={
            "definition": "one-at-a-time",
            "items": [{"video_id": i} for i in range(3)],
        },
    ).start()
    broker.deliver(lambda m: m.name.endswith("spawn_each"))
    kids = Workflow.get(wf.id).children()[0]
    assert [k.status for k in kids] == ["running", "pending", "pending"]
    broker.deliver_all()
    assert Workflow.get(wf.id).status == "success"
    assert wf.tasks[0].result == [0, 1, 2]


@pytest.mark.parametrize("max_runs", [0, -1, "2", True, 1.5])
def test_max_runs_must_be_a_positive_integer(app, db, max_runs):
    current_wtflow.register("bad-limit", "tests.example_tasks:nap", max_runs=max_runs)
    run = Workflow.create("bad-limit")
    with pytest.raises(InvalidDefinitionError, match="max_runs of workflow"):
        run.start()
    assert Workflow.get(run.id).status == "pending"


def test_limits_come_from_the_registration_or_the_class(app):
    assert current_wtflow.limits("add-chain") is None
    assert current_wtflow.limits("one-at-a-time") == (1, None)
    max_runs, key = current_wtflow.limits("per-video")
    assert max_runs == 1 and key({"video_id": 9}) == 9


def test_restarting_a_task_of_a_finished_run_needs_a_free_slot(app, db, broker):
    first = Workflow.create("failing-one-at-a-time").start()
    broker.deliver_all()
    second = Workflow.create("failing-one-at-a-time").start()
    assert statuses([first, second]) == ["failure", "running"]
    with pytest.raises(InvalidStateError, match="no free slot"):
        Workflow.get(first.id).tasks[0].restart()
    assert statuses([first, second]) == ["failure", "running"]
    broker.deliver_all()
    Workflow.get(first.id).tasks[0].restart()
    assert statuses([first, second]) == ["running", "failure"]


def test_a_new_run_does_not_jump_ahead_of_waiting_ones(app, db, broker, monkeypatch):
    runs = [Workflow.create("two-at-a-time", data={"video_id": i}) for i in range(4)]
    for run in runs[:3]:
        run.start()
    assert statuses(runs) == ["running", "running", "pending", "pending"]
    # A slot frees, but its admission is lost (a crash after the commit)...
    with monkeypatch.context() as patch:
        patch.setattr(concurrency.AdmitOp, "on_post_commit", lambda self, uow: None)
        broker.deliver(lambda m: m is broker.messages[0])
    assert statuses(runs) == ["success", "running", "pending", "pending"]
    # ...then a newer run is started: the older waiting run gets the slot.
    runs[3].start()
    assert statuses(runs) == ["success", "running", "running", "pending"]
