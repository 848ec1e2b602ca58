# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The ``wtflow`` command line group, with eager Celery."""

import json
import uuid

import pytest

from invenio_wtflow import Workflow, cli
from invenio_wtflow.engine import dispatch
from invenio_wtflow.models import WorkflowRun


@pytest.fixture()
def run(app):
    """Invoke ``wtflow`` with arguments; return the click result."""
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(cli.wtflow, [str(a) for a in args])


@pytest.fixture()
def lost_publish(monkeypatch):
    """Drop published messages, leaving started tasks ``queued``."""
    monkeypatch.setattr(dispatch, "_send", lambda message: None)
    return monkeypatch


def ok(result, code=0):
    """Assert the exit code, nothing on stderr unless waited; return stdout."""
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout


def as_json(result):
    """Return the JSON printed by a successful command."""
    return json.loads(ok(result))


def test_group_is_registered_as_flask_command(app, db):
    app.cli.add_command(cli.wtflow)
    result = app.test_cli_runner().invoke(args=["wtflow", "--help"])
    for command in ("list", "show", "start", "stop", "restart", "history"):
        assert f"  {command} " in ok(result)
    assert "Exit codes" in result.stdout
    help_text = ok(app.test_cli_runner().invoke(args=["wtflow", "start", "--help"]))
    assert "Create a run of the definition NAME" in help_text


def test_list_filters_and_pages(app, db, run):
    done = Workflow.create("add-chain").start()
    pending = Workflow.create("video", data={"video_id": 1})
    lines = ok(run("list")).splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "CREATED", "MESSAGE"]
    assert [line.split()[:3] for line in lines[1:3]] == [
        [str(pending.id), "video", "pending"],
        [str(done.id), "add-chain", "success"],
    ]
    assert lines[-1] == "Page 1: 2 of 2 runs."
    assert str(done.id) not in ok(run("list", "--status", "pending"))
    assert str(pending.id) not in ok(run("list", "--name", "add-chain"))
    assert ok(run("list", "--created-by", 7)) == "Page 1: 0 of 0 runs.\n"
    page = as_json(run("list", "--json", "--page", 2, "--size", 1))
    assert (page["total"], page["page"], page["size"]) == (2, 2, 1)
    assert [(h["id"], h["status"]) for h in page["hits"]] == [(str(done.id), "success")]
    assert "tasks" not in page["hits"][0]


def test_show_is_a_tree_in_graph_order(app, db, run):
    wf = Workflow.create("video", data={"video_id": 3}).start()
    lines = ok(run("show", wf.id)).splitlines()
    assert lines[0] == f"video {wf.id}  success"
    assert lines[1].startswith("  created ")
    tasks = lines[2:]
    assert [line.split()[:4] for line in tasks] == [
        [f"#{i}", "success", "attempt", "1"] for i in range(4)
    ]
    assert "probing" in tasks[0] and "100%" in tasks[0]
    assert "after #0, #1" in tasks[2] and "transcode" in tasks[2]
    assert "after #2" in tasks[3] and str(wf.tasks[3].id) in tasks[3]


def test_show_errors_on_demand(app, db, run):
    wf = Workflow.create("failing").start()
    plain = ok(run("show", wf.id))
    lines = plain.splitlines()
    assert "failure" in lines[0] and "boom" in lines[2]  # the run's message
    assert lines[4].startswith("  #1  failure") and "ValueError: boom" in lines[4]
    assert "Cancelled: upstream task" in lines[5]
    assert "Traceback" not in plain
    detailed = ok(run("show", wf.id, "--errors"))
    assert "  #1 error: ValueError: boom" in detailed
    assert "      Traceback (most recent call last):" in detailed


def test_show_json(app, db, run):
    wf = Workflow.create("failing").start()
    payload = as_json(run("show", wf.id, "--json"))
    assert (payload["id"], payload["status"]) == (str(wf.id), "failure")
    tasks = payload["tasks"]
    assert [t["position"] for t in tasks] == [0, 1, 2, 3, 4]
    assert tasks[1]["error"] == "ValueError: boom"
    assert tasks[1]["depends_on"] == [tasks[0]["id"]]
    assert tasks[0]["result"] == 2 and "traceback" not in tasks[1]
    detailed = as_json(run("show", wf.id, "--json", "--errors"))
    assert "Traceback" in detailed["tasks"][1]["traceback"]


def test_start(app, db, run):
    out = ok(run("start", "video", "--data", '{"video_id": 5}'))
    wf = Workflow.get(WorkflowRun.query.one().id)
    assert out == f"Started video {wf.id}: success\n"
    assert wf.data == {"video_id": 5} and wf.result == "published 5"
    payload = as_json(run("start", "add-chain", "--key", "k1", "--json"))
    assert payload["status"] == "success" and payload["key"] == "k1"
    again = run("start", "add-chain", "--key", "k1", "--json")
    assert json.loads(ok(again))["id"] == payload["id"]
    assert WorkflowRun.query.count() == 2


def test_start_wait_exit_codes(app, db, run):
    result = run("start", "add-chain", "--wait")
    assert "success" in ok(result).splitlines()[0]
    assert result.stderr.startswith("Waiting for ")
    assert Workflow.get(WorkflowRun.query.one().id).result == 60
    failed = run("start", "failing", "--wait")
    assert "failure" in ok(failed, code=1).splitlines()[0]
    assert "ValueError: boom" in failed.stdout
    payload = json.loads(ok(run("start", "failing", "--wait", "--json"), code=1))
    assert payload["status"] == "failure"


def test_start_wait_polls_until_a_worker_finishes(app, db, run, lost_publish):
    naps = []

    def nap(seconds):
        """A worker picks the run up while the command sleeps."""
        naps.append(seconds)
        lost_publish.undo()
        assert dispatch.requeue_stale(older_than=0) == 1

    lost_publish.setattr(cli, "sleep", nap)
    result = run("start", "add-chain", "--wait", "--interval", 0.5, "--json")
    assert json.loads(ok(result))["status"] == "success"
    assert naps == [0.5]


def test_start_wait_timeout(app, db, run, lost_publish):
    result = run("start", "add-chain", "--wait", "--timeout", 0)
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("Error: Timed out after 0s")
    assert "is running" in result.stderr
    assert WorkflowRun.query.one().status == "running"


def test_stop(app, db, run, lost_publish):
    wf = Workflow.create("add-chain").start()
    assert ok(run("stop", wf.id)) == f"Stopped add-chain {wf.id}: cancelled\n"
    other = Workflow.create("add-chain").start()
    payload = as_json(run("stop", other.id, "--json"))
    assert payload["status"] == "cancelled"
    assert {t["status"] for t in payload["tasks"]} == {"cancelled"}


def test_restart_workflow_and_task(app, db, run):
    wf = Workflow.create("add-chain").start()
    second = wf.tasks[1].id
    out = ok(run("restart", wf.id, "--task", second))
    assert out == f"Restarted task {second} of add-chain {wf.id}: success\n"
    assert [t.attempt for t in Workflow.get(wf.id).tasks] == [1, 2, 2]
    payload = as_json(run("restart", wf.id, "--data", '{"note": "x"}', "--json"))
    assert [t["attempt"] for t in payload["tasks"]] == [2, 3, 3]
    assert payload["data"] == {"note": "x"} and payload["status"] == "success"
    assert Workflow.get(wf.id).result == 60


def test_history(app, db, run):
    wf = Workflow.create("add-chain").start()
    lines = ok(run("history", wf.id)).splitlines()
    assert lines[0].split() == ["TIME", "STATUS", "ATTEMPT", "MESSAGE"]
    assert lines[1].split()[2:] == ["pending", "-"]
    assert lines[-1].split()[2] == "success"
    task = wf.tasks[0].id
    lines = ok(run("history", wf.id, "--task", task)).splitlines()[1:]
    assert [line.split()[2:4] for line in lines] == [
        ["pending", "0"],
        ["queued", "1"],
        ["running", "1"],
        ["success", "1"],
    ]
    hits = as_json(run("history", wf.id, "--task", task, "--json"))["hits"]
    assert [h["status"] for h in hits] == ["pending", "queued", "running", "success"]


def test_requeue(app, db, run, lost_publish):
    wf = Workflow.create("add-chain").start()
    lost_publish.undo()
    assert ok(run("requeue")) == "Re-published, recovered or timed out 0 attempt(s).\n"
    assert as_json(run("requeue", "--older-than", 0, "--json")) == {"requeued": 1}
    assert Workflow.get(wf.id).status == "success"


@pytest.mark.parametrize(
    "args, message",
    [
        (["start", "nope"], "No workflow definition is registered as 'nope'."),
        (["start", "add-chain", "--data", "{nope"], "--data is not valid JSON: "),
        (["start", "add-chain", "--data", "[1]"], "--data must be a JSON object"),
        (["show", uuid.UUID(int=1)], f"No workflow run with id '{uuid.UUID(int=1)}'"),
        (["show", "not-a-uuid"], "No workflow run with id 'not-a-uuid'."),
        (["stop", "not-a-uuid"], "No workflow run with id"),
        (["restart", uuid.UUID(int=1)], "No workflow run with id"),
        (["history", uuid.UUID(int=1), "--json"], "No workflow run with id"),
    ],
)
def test_errors_are_one_line_and_write_nothing(app, db, run, args, message):
    result = run(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {message}")
    assert len(result.stderr.splitlines()) == 1
    assert WorkflowRun.query.count() == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["stop"], "is already success; nothing to stop."),
        (["restart", "--task", "not-a-uuid"], "No task run with id 'not-a-uuid'."),
        (["history", "--task", "other"], "has no task"),
        (["restart", "--data", "1"], "--data must be a JSON object, not int."),
    ],
)
def test_errors_on_an_existing_run_change_nothing(app, db, run, args, message):
    wf = Workflow.create("add-chain").start()
    other = Workflow.create("add-chain")
    args = [other.tasks[0].id if a == "other" else a for a in args]
    versions = len(wf.history()), [len(t.history()) for t in wf.tasks]
    result = run(args[0], wf.id, *args[1:])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert WorkflowRun.query.count() == 2
    wf = Workflow.get(wf.id)
    assert (len(wf.history()), [len(t.history()) for t in wf.tasks]) == versions


def test_show_names_the_children_and_the_parent(app, db, run):
    wf = Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": ["a", "broken"], "gather": True},
    ).start()
    lines = ok(run("show", wf.id)).splitlines()
    assert "  children: 2 (1 failure, 1 success)" in lines
    child = wf.children()[0][0]
    lines = ok(run("show", child.id)).splitlines()
    assert f"  child of {wf.id} (task {wf.tasks[0].id})" in lines
