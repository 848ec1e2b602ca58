# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""REST API, with real users logged in through invenio-accounts."""

import json
import uuid

import pytest
from celery import group
from invenio_access.models import ActionUsers
from sqlalchemy import event

from invenio_wtflow import Workflow, current_wtflow
from invenio_wtflow.models import TaskRun, WorkflowRun

from .example_tasks import add
from .helpers import login


def spawn_tree(user, qualities):
    """Run a "transcode-all" of ``user``: one child run per quality."""
    return Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": list(qualities)},
        created_by=user.id,
    ).start()


def rows():
    """Number of workflow and task rows."""
    return WorkflowRun.query.count(), TaskRun.query.count()


def test_create_start_and_read(client, users):
    login(client, users["admin"])
    res = client.post("/workflows/", json={"name": "video", "data": {"video_id": 5}})
    assert res.status_code == 201
    body = res.json
    assert res.headers["Location"] == body["links"]["self"]
    assert body["status"] == "pending"
    assert [t["status"] for t in body["tasks"]] == ["pending"] * 4
    assert body["tasks"][2]["depends_on"] == sorted(
        [body["tasks"][0]["id"], body["tasks"][1]["id"]]
    )
    assert body["created_by"] == users["admin"].id

    res = client.post(f"/workflows/{body['id']}", json={"data": {"video_id": 6}})
    assert res.status_code == 202
    assert res.json["status"] == "success"
    assert res.json["data"] == {"video_id": 6}

    res = client.get(f"/workflows/{body['id']}")
    assert res.status_code == 200 and res.headers["ETag"]
    again = client.get(
        f"/workflows/{body['id']}", headers={"If-None-Match": res.headers["ETag"]}
    )
    assert again.status_code == 304

    res = client.post(f"/workflows/{body['id']}", json={})
    assert res.status_code == 409
    assert "only a pending run" in res.json["message"]


def test_create_with_start_and_key(client, users):
    login(client, users["admin"])
    first = client.post(
        "/workflows/", json={"name": "add-chain", "start": True, "key": "dep-1"}
    )
    assert first.status_code == 201 and first.json["status"] == "success"
    again = client.post(
        "/workflows/", json={"name": "add-chain", "start": True, "key": "dep-1"}
    )
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert rows() == (1, 3)


def test_task_resources_and_history(client, users):
    login(client, users["admin"])
    wf = client.post("/workflows/", json={"name": "failing", "start": True}).json
    assert wf["status"] == "failure"
    failed = wf["tasks"][1]
    res = client.get(f"/workflows/{wf['id']}/tasks/{failed['id']}")
    assert res.status_code == 200
    assert res.json["error"] == "ValueError: boom"
    assert "Traceback" in res.json["traceback"]

    history = client.get(f"/workflows/{wf['id']}/tasks/{failed['id']}/history").json
    assert [h["status"] for h in history["hits"]] == [
        "pending",
        "queued",
        "running",
        "failure",
    ]
    assert history["hits"][0]["user_id"] == users["admin"].id  # who created it
    assert client.get(f"/workflows/{wf['id']}/history").json["hits"]

    first = wf["tasks"][0]
    res = client.put(
        f"/workflows/{wf['id']}/tasks/{first['id']}", json={"data": {"retry": 1}}
    )
    assert res.status_code == 202 and res.json["attempt"] == 2
    assert client.get(f"/workflows/{wf['id']}").json["data"] == {"retry": 1}

    res = client.put(f"/workflows/{wf['id']}", json={"data": {"x": 1}})
    assert res.status_code == 202
    assert res.json["id"] == wf["id"] and res.json["data"] == {"retry": 1, "x": 1}


def test_actions_that_make_no_sense_are_conflicts(client, users):
    login(client, users["admin"])
    wf = client.post("/workflows/", json={"name": "add-chain"}).json
    pending_task = wf["tasks"][0]
    res = client.put(f"/workflows/{wf['id']}/tasks/{pending_task['id']}", json={})
    assert res.status_code == 409 and "not run yet" in res.json["message"]
    done = client.post("/workflows/", json={"name": "add-chain", "start": True}).json
    before = client.get(f"/workflows/{done['id']}/history").json
    res = client.delete(f"/workflows/{done['id']}/tasks/{done['tasks'][0]['id']}")
    assert res.status_code == 409 and "already success" in res.json["message"]
    assert client.delete(f"/workflows/{done['id']}").status_code == 409
    assert client.get(f"/workflows/{done['id']}/history").json == before


def test_stop_workflow_and_task(client, users):
    login(client, users["admin"])
    wf = client.post("/workflows/", json={"name": "add-chain"}).json
    task = wf["tasks"][1]
    res = client.delete(f"/workflows/{wf['id']}/tasks/{task['id']}")
    assert res.status_code == 202 and res.json["status"] == "cancelled"
    res = client.delete(f"/workflows/{wf['id']}")
    assert res.status_code == 202
    assert [t["status"] for t in res.json["tasks"]] == ["cancelled"] * 3


def test_list_filters_and_pagination(client, users):
    login(client, users["admin"])
    ids = [
        client.post("/workflows/", json={"name": "add-chain", "start": True}).json["id"]
        for _ in range(3)
    ]
    client.post("/workflows/", json={"name": "failing", "start": True})
    res = client.get("/workflows/?name=add-chain&size=2")
    assert res.status_code == 200
    assert res.json["total"] == 3
    assert [h["id"] for h in res.json["hits"]] == ids[::-1][:2]
    assert "next" in res.json["links"] and "prev" not in res.json["links"]
    page2 = client.get(res.json["links"]["next"]).json
    assert [h["id"] for h in page2["hits"]] == ids[:1]
    assert client.get("/workflows/?status=failure").json["total"] == 1


def test_permissions(client, users, app):
    wf = Workflow.create("add-chain", created_by=users["owner"].id)
    other = Workflow.create("add-chain", created_by=users["admin"].id)
    url = f"/workflows/{wf.id}"

    assert client.get(url).status_code == 401
    assert client.get("/workflows/").status_code == 401
    assert client.post("/workflows/", json={"name": "add-chain"}).status_code == 401

    login(client, users["other"])
    assert client.get(url).status_code == 403
    assert client.delete(url).status_code == 403
    assert client.post("/workflows/", json={"name": "add-chain"}).status_code == 403
    assert client.get("/workflows/").json["total"] == 0

    login(client, users["owner"])
    assert client.get(url).status_code == 200
    listing = client.get("/workflows/").json
    assert [h["id"] for h in listing["hits"]] == [str(wf.id)]
    assert client.get(f"/workflows/{other.id}").status_code == 403
    assert client.post(url, json={}).status_code == 202
    assert client.put(url, json={}).status_code == 202
    finished = client.delete(url)
    assert finished.status_code == 409 and "nothing to stop" in finished.json["message"]
    pending = Workflow.create("add-chain", created_by=users["owner"].id)
    assert client.delete(f"/workflows/{pending.id}").status_code == 202


def test_superuser_may_do_everything(client, users, db):
    from invenio_access.permissions import superuser_access

    db.session.add(ActionUsers.allow(superuser_access, user=users["other"]))
    db.session.commit()
    wf = Workflow.create("add-chain", created_by=users["owner"].id)
    login(client, users["other"])
    assert client.get(f"/workflows/{wf.id}").status_code == 200
    assert client.get("/workflows/").json["total"] == 1
    res = client.post("/workflows/", json={"name": "add-chain", "start": True})
    assert res.status_code == 201


def test_per_definition_permission_factory(client, users):
    from invenio_access import Permission
    from invenio_access.permissions import any_user

    current_wtflow.register(
        "open",
        add.si(1, 2),
        permission_factory=lambda workflow, action: Permission(any_user),
    )
    login(client, users["other"])
    res = client.post("/workflows/", json={"name": "open", "start": True})
    assert res.status_code == 201 and res.json["status"] == "success"


@pytest.mark.parametrize(
    "body, content_type, status, names",
    [
        ("{not json", "application/json", 400, "Malformed JSON"),
        ("[1, 2]", "application/json", 400, "JSON object"),
        ('{"name": "nope"}', "application/json", 400, "nope"),
        ('{"name": "add-chain", "color": "red"}', "application/json", 400, "color"),
        ('{"name": "add-chain", "data": [1]}', "application/json", 400, "data"),
        ('{"data": {}}', "application/json", 400, "name"),
        ('{"name": "add-chain"}', "text/plain", 415, "JSON"),
    ],
)
def test_bad_create_bodies(client, users, body, content_type, status, names):
    login(client, users["admin"])
    res = client.post("/workflows/", data=body, content_type=content_type)
    assert res.status_code == status
    assert res.json["status"] == status
    assert names in json.dumps(res.json)
    assert rows() == (0, 0)


def test_body_too_large(client, users, app):
    login(client, users["admin"])
    big = json.dumps({"name": "add-chain", "data": {"x": "y" * 2_000_000}})
    res = client.post("/workflows/", data=big, content_type="application/json")
    assert res.status_code == 413 and res.json["status"] == 413
    assert rows() == (0, 0)


@pytest.mark.parametrize(
    "query, field",
    [
        ("size=abc", "size"),
        ("size=1000", "size"),
        ("page=0", "page"),
        ("parent=not-a-uuid", "parent"),
    ],
)
def test_bad_list_arguments(client, users, query, field):
    login(client, users["admin"])
    res = client.get(f"/workflows/?{query}")
    assert res.status_code == 400
    assert res.headers["Content-Type"] == "application/json"
    assert res.json["status"] == 400
    assert res.json["errors"][0]["field"] == field


@pytest.mark.parametrize(
    "query, field",
    [
        ("size=abc", "size"),
        ("size=1000", "size"),
        ("page=0", "page"),
        ("name=transcode-one", "name"),
    ],
)
def test_bad_children_arguments(client, users, query, field):
    login(client, users["admin"])
    parent = spawn_tree(users["admin"], ["a"])
    res = client.get(f"/workflows/{parent.id}/children?{query}")
    assert res.status_code == 400 and res.json["status"] == 400
    assert res.json["errors"][0]["field"] == field


def test_children_in_spawn_order_with_pagination(client, users):
    parent = spawn_tree(users["owner"], ["a", "b", "c"])
    spawner = parent.tasks[0]
    login(client, users["owner"])
    url = f"http://localhost/workflows/{parent.id}/children"

    detail = client.get(f"/workflows/{parent.id}").json
    assert detail["children"] == {"total": 3}
    assert detail["links"]["children"] == url
    assert (detail["parent_id"], detail["parent_task_id"]) == (None, None)
    assert (detail["root_id"], detail["spawn_index"]) == (str(parent.id), None)

    res = client.get(f"/workflows/{parent.id}/children?size=2")
    assert res.status_code == 200 and res.headers["ETag"]
    first = res.json
    assert first["total"] == 3
    assert [h["data"]["quality"] for h in first["hits"]] == ["a", "b"]
    assert [h["spawn_index"] for h in first["hits"]] == [0, 1]
    assert first["links"] == {
        "self": f"{url}?page=1&size=2",
        "next": f"{url}?page=2&size=2",
    }
    second = client.get(first["links"]["next"]).json
    assert [h["data"]["quality"] for h in second["hits"]] == ["c"]
    assert second["links"]["prev"] == first["links"]["self"]
    assert "next" not in second["links"]

    child = first["hits"][0]
    assert "tasks" not in child and "children" not in child
    assert child["parent_id"] == str(parent.id)
    assert child["root_id"] == str(parent.id)
    assert child["parent_task_id"] == str(spawner.id)
    assert child["status"] == "success"
    read = client.get(child["links"]["self"]).json
    assert read["children"] == {"total": 0}
    assert {k: read[k] for k in child if k != "links"} == {
        k: v for k, v in child.items() if k != "links"
    }
    empty = client.get(child["links"]["children"]).json
    assert (empty["hits"], empty["total"]) == ([], 0)


def test_list_filters_by_parent(client, users):
    login(client, users["admin"])
    parent = spawn_tree(users["admin"], ["a", "b"])
    spawn_tree(users["admin"], ["x"])
    res = client.get(f"/workflows/?parent={parent.id}&size=1")
    assert res.status_code == 200 and res.json["total"] == 2
    assert res.json["links"]["next"] == (
        f"http://localhost/workflows/?page=2&size=1&parent={parent.id}"
    )
    hits = res.json["hits"] + client.get(res.json["links"]["next"]).json["hits"]
    assert sorted(h["data"]["quality"] for h in hits) == ["a", "b"]
    assert {h["parent_id"] for h in hits} == {str(parent.id)}
    assert client.get(f"/workflows/?parent={uuid.uuid4()}").json["total"] == 0
    assert client.get("/workflows/").json["total"] == 5


def test_children_permissions(client, users):
    parent = spawn_tree(users["owner"], ["a"])
    url = f"/workflows/{parent.id}/children"
    res = client.get(url)
    assert res.status_code == 401 and res.json["status"] == 401
    login(client, users["other"])
    res = client.get(url)
    assert res.status_code == 403 and res.json["status"] == 403
    assert client.get(f"/workflows/?parent={parent.id}").json["total"] == 0
    for user in ("owner", "admin"):
        login(client, users[user])
        assert client.get(url).json["total"] == 1


def test_children_of_an_unknown_run(client, users):
    login(client, users["admin"])
    res = client.get(f"/workflows/{uuid.uuid4()}/children")
    assert res.status_code == 404 and res.json["status"] == 404
    assert client.get("/workflows/not-a-uuid/children").status_code == 404


def test_not_found(client, users):
    login(client, users["admin"])
    wf = Workflow.create("add-chain")
    other = Workflow.create("add-chain")
    task_of_other = other.tasks[0].id
    assert client.get("/workflows/not-a-uuid").status_code == 404
    assert client.get(f"/workflows/{uuid.uuid4()}").json["status"] == 404
    res = client.get(f"/workflows/{wf.id}/tasks/{task_of_other}")
    assert res.status_code == 404
    assert client.delete(f"/workflows/{uuid.uuid4()}").status_code == 404


def count_queries(app, db, func):
    """Run ``func`` and return how many SQL statements it sent."""
    statements = []

    def record(conn, cursor, statement, *args):
        if "SAVEPOINT" not in statement:
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        func()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return len(statements)


def test_reading_a_run_costs_the_same_for_10_and_1000_tasks(client, users, app, db):
    login(client, users["admin"])
    counts = []
    for width in (10, 1000):
        current_wtflow.register(
            f"wide-{width}", group(add.si(i, i) for i in range(width))
        )
        wf = Workflow.create(f"wide-{width}")
        url = f"/workflows/{wf.id}"
        client.get(url)  # warm caches (user, permissions)
        counts.append(count_queries(app, db, lambda: client.get(url).json["tasks"]))
    assert counts[0] == counts[1]


def test_reading_a_run_costs_the_same_for_1_and_20_children(client, users, app, db):
    login(client, users["admin"])
    counts = []
    for width in (1, 20):
        wf = spawn_tree(users["admin"], [f"q{i}" for i in range(width)])
        child = wf.children(size=1)[0][0]
        for url in (f"/workflows/{wf.id}", f"/workflows/{child.id}"):
            client.get(url)  # warm caches (user, permissions)
            counts.append(
                count_queries(app, db, lambda: client.get(url).json["children"])
            )
    assert counts[:2] == counts[2:]
    assert counts[0] == counts[1]  # a child costs what its parent costs


def test_create_and_start_checks_both_permissions_before_writing(client, users):
    from invenio_access import Permission
    from invenio_access.permissions import any_user

    def create_only(workflow, action):
        return Permission(any_user) if action == "create" else Permission()

    current_wtflow.register("create-only", add.si(1, 2), permission_factory=create_only)
    login(client, users["other"])
    res = client.post("/workflows/", json={"name": "create-only", "start": True})
    assert res.status_code == 403
    assert rows() == (0, 0)
    assert client.post("/workflows/", json={"name": "create-only"}).status_code == 201


def test_the_task_list_is_dumped_as_the_task_schema_would(app, db):
    """The hand-written dump (and PostgreSQL's) equal marshmallow's."""
    from invenio_wtflow.schemas import TaskSchema
    from invenio_wtflow.views import _task_payload, dump_task_list, dump_task_rows

    current_wtflow.register(
        "some-fail", group(add.s(1, 1), add.s("a", 1)) | add.si(2, 2)
    )
    failed = Workflow.create("some-fail").start()  # success, failure, cancelled
    grown = Workflow.create("regression", data={"architectures": ["x86", "arm"]})
    grown.start()  # populate ran: nodes with keys, a callback
    on_the_hour = Workflow.get(failed.id).tasks[0].model
    on_the_hour.queued_at = on_the_hour.queued_at.replace(microsecond=0)
    db.session.commit()
    for wf in (Workflow.get(failed.id), Workflow.get(grown.id)):
        edges = wf.dependencies()
        expected = TaskSchema(many=True).dump(
            [_task_payload(t.model, edges.get(t.id, [])) for t in wf.tasks]
        )
        assert dump_task_rows(wf) == expected
        assert json.loads(dump_task_list(wf)) == expected
    listed = dump_task_rows(Workflow.get(grown.id))
    assert {"populate", "callback", None} <= {t["kind"] for t in listed}
    assert {"x86", "arm"} <= {t["key"] for t in listed}
    statuses = {t["status"] for t in dump_task_rows(Workflow.get(failed.id))}
    assert statuses == {"success", "failure", "cancelled"}


def test_a_response_embeds_raw_json_after_the_other_keys(app):
    from invenio_wtflow.views import RawJSON, json_response

    with app.test_request_context("/"):
        body = json_response({"b": 1, "a": RawJSON('[{"x":1}]')}).get_data(True)
        assert body == '{"b":1,"a":[{"x":1}]}'
        body = json_response({"a": RawJSON("[]")}).get_data(True)
        assert body == '{"a":[]}'
