# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Status pages: rendered by the server, and live in a real browser.

This module's application turns on invenio-rest's CSRF protection, as an
Invenio instance does: the page's buttons must send the token.
"""

import json
import os
import shutil
import threading
import time
from html.parser import HTMLParser

import pytest
from flask import Flask
from invenio_access import Permission
from invenio_access.permissions import authenticated_user, superuser_access
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from invenio_wtflow import InvenioWTFlow, Workflow, current_wtflow
from invenio_wtflow.ui import api_url, create_ui_blueprint

from .helpers import PASSWORD, create_user, csrf_headers, login

PAGES = "/ui/workflows"
"""Where the test application serves the status pages."""

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
"""Debian's Chromium, which Playwright drives (no browser download)."""

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package "
    "(apt-get install chromium) to run the browser tests",
)


@pytest.fixture(scope="module")
def app_config(app_config):
    """CSRF protection on, fast polling, small pages."""
    app_config.update(
        REST_CSRF_ENABLED=True,
        WTFLOW_UI_POLL_INTERVAL=0.2,
        WTFLOW_DEFAULT_PAGE_SIZE=5,
    )
    return app_config


class Page(HTMLParser):
    """The start tags of an HTML page, to look elements up by attributes."""

    def __init__(self, html):
        """Parse ``html``."""
        super().__init__()
        self.html = html
        self.elements = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        """Keep the tag and its attributes."""
        self.elements.append((tag, dict(attrs)))

    def find(self, tag, **attrs):
        """Attributes of the ``tag`` elements that have ``attrs``.

        ``data_status="x"`` matches ``data-status="x"``; ``True`` matches any
        value.
        """
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            found
            for name, found in self.elements
            if name == tag
            and all(
                k in found and (v is True or found[k] == v) for k, v in wanted.items()
            )
        ]

    def one(self, tag, **attrs):
        """The only ``tag`` element with ``attrs``."""
        (found,) = self.find(tag, **attrs)
        return found


def get_page(client, path, status=200):
    """GET a status page and parse it."""
    res = client.get(f"{PAGES}/{path}")
    assert res.status_code == status, res.get_data(as_text=True)
    return Page(res.get_data(as_text=True))


def read_only(workflow, action):
    """Any logged-in user may read; only superusers may do anything else."""
    if action == "read":
        return Permission(authenticated_user)
    return Permission(superuser_access)


#
# Rendered by the server
#
def test_run_page_shows_graph_tasks_errors_and_actions(app, db, users):
    wf = Workflow.create("failing", created_by=users["owner"].id).start()
    first, boom, left, right, total = [str(t.id) for t in wf.tasks]
    page = get_page(login(app.test_client(), users["admin"]), wf.id)

    nodes = {n["data-task-id"]: n for n in page.find("a", data_task_id=True)}
    shown = {
        r["data-error-for"]: "hidden" not in r
        for r in page.find("tr", data_error_for=True)
    }
    assert shown == {first: False, boom: True, left: False, right: False, total: False}
    assert '<span class="wtflow-error-text" data-error-summary>ValueError: boom' in (
        page.html
    )
    rows = {r["data-task-id"]: r for r in page.find("tr", data_task_id=True)}
    expected = {str(t.id): t.status for t in wf.tasks}
    assert {k: n["data-status"] for k, n in nodes.items()} == expected
    assert {k: r["data-status"] for k, r in rows.items()} == expected
    assert nodes[total]["data-depends-on"] == " ".join(sorted([left, right]))
    assert nodes[boom]["aria-label"] == "boom #1: Failure"
    assert page.one("span", data_field="run-status")["data-status"] == "failure"

    buttons = {b["data-action"]: b for b in page.find("button", data_action=True)}
    assert "hidden" in buttons["start"] and "hidden" in buttons["stop"]
    assert "hidden" not in buttons["restart"]
    restart = {
        b["data-task-id"]: "hidden" not in b
        for b in page.find("button", data_action="restart-task")
    }
    # The cancelled tasks wait on the failed one: restart that one instead.
    assert restart == {first: True, boom: True, left: False, right: False, total: False}

    root = page.one("div", data_wtflow_run=True)
    settings = json.loads(root["data-settings"])
    assert settings["run"] == f"/workflows/{wf.id}"
    assert settings["history"] == f"/workflows/{wf.id}/history"
    assert settings["children"] == f"/workflows/{wf.id}/children"
    assert settings["page"] == f"{PAGES}/__id__"
    assert settings["pollInterval"] == 0.2
    assert root["data-live"] == "false"
    assert json.loads(root["data-labels"])["failure"] == "Failure"


def test_a_pending_run_is_live_and_offers_start_and_stop(app, db, users):
    wf = Workflow.create("add-chain", created_by=users["owner"].id)
    client = login(app.test_client(), users["owner"])
    page = get_page(client, wf.id)
    assert page.one("div", data_wtflow_run=True)["data-live"] == "true"
    buttons = {
        b["data-action"]: "hidden" not in b
        for b in page.find("button", data_action=True)
        if b["data-action"] != "restart-task"
    }
    assert buttons == {"start": True, "stop": True, "restart": False}
    tasks = page.find("button", data_action="restart-task")
    assert len(tasks) == 3 and all("hidden" in b for b in tasks)


def test_buttons_follow_the_permissions(app, db, users):
    current_wtflow.register(
        "read-only",
        "tests.example_tasks:failing_workflow",
        permission_factory=read_only,
    )
    wf = Workflow.create("read-only", created_by=users["owner"].id).start()

    owned = get_page(login(app.test_client(), users["owner"]), wf.id)
    assert owned.find("button", data_action=True) == []  # the factory denies
    assert owned.find("tr", data_error_for=True) == []  # no task-read either

    admin = get_page(login(app.test_client(), users["admin"]), wf.id)
    assert admin.find("button", data_action=True) == []

    mine = Workflow.create("failing", created_by=users["owner"].id).start()
    page = get_page(login(app.test_client(), users["owner"]), mine.id)
    actions = {b["data-action"] for b in page.find("button", data_action=True)}
    assert actions == {"start", "stop", "restart", "restart-task"}
    assert page.find("tr", data_error_for=True)


def test_read_permission_unknown_runs_and_anonymous_users(app, db, users):
    wf = Workflow.create("add-chain", created_by=users["owner"].id)
    anonymous = app.test_client()
    assert anonymous.get(f"{PAGES}/{wf.id}").status_code == 401
    assert anonymous.get(f"{PAGES}/").status_code == 401

    other = login(app.test_client(), users["other"])
    assert other.get(f"{PAGES}/{wf.id}").status_code == 403
    get_page(other, "00000000-0000-0000-0000-000000000000", status=404)
    get_page(other, "not-a-run", status=404)
    assert (
        Page(other.get(f"{PAGES}/").get_data(as_text=True)).find("tr", data_run_id=True)
        == []
    )


def test_list_filters_by_name_and_status_and_pages(app, db, users):
    ids = [Workflow.create("add-chain").start().id for _ in range(6)]
    failed = Workflow.create("failing").start()
    Workflow.create("video", data={"video_id": 1})
    owned = Workflow.create("video", data={"video_id": 2}, created_by=users["owner"].id)
    client = login(app.test_client(), users["admin"])

    def runs(query):
        page = get_page(client, query)
        return page, [r["data-run-id"] for r in page.find("tr", data_run_id=True)]

    page, found = runs("")
    assert len(found) == 5 and "Page 1 of 2" in page.html
    assert page.one("a", rel="next")["href"] == f"{PAGES}/?page=2"

    page, found = runs("?name=add-chain")
    assert found == [str(i) for i in ids[::-1][:5]]
    assert page.one("a", rel="next")["href"] == f"{PAGES}/?page=2&name=add-chain"
    page, found = runs("?name=add-chain&page=2")
    assert found == [str(ids[0])] and page.find("a", rel="next") == []
    assert page.one("a", rel="prev")["href"] == f"{PAGES}/?page=1&name=add-chain"
    assert "6 runs match the filters." in page.html

    page, found = runs("?status=failure")
    assert found == [str(failed.id)]
    assert page.one("option", value="failure", selected=True)
    assert runs("?status=success&name=failing")[1] == []
    assert len(runs("?status=no-such-status")[1]) == 5  # ignored

    owner = login(app.test_client(), users["owner"])
    page = Page(owner.get(f"{PAGES}/").get_data(as_text=True))
    assert [r["data-run-id"] for r in page.find("tr", data_run_id=True)] == [
        str(owned.id)
    ]


def test_child_run_pages_link_parent_and_children(app, db, users):
    parent = Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": ["480p", "720p"]},
        created_by=users["admin"].id,
    ).start()
    client = login(app.test_client(), users["admin"])
    page = get_page(client, parent.id)
    section = page.one("section", data_children=True)
    assert "hidden" not in section
    assert '<span class="wtflow-count" data-children-total>2</span>' in page.html

    children, _ = parent.children()
    page = get_page(client, children[0].id)
    assert page.find("a", href=f"{PAGES}/{parent.id}")
    assert "task transcode_all #0 of" in page.html
    assert "hidden" in page.one("section", data_children=True)


def test_page_sets_the_csrf_token_its_buttons_send(app, db, users):
    wf = Workflow.create("failing", created_by=users["admin"].id).start()
    client = login(app.test_client(), users["admin"])
    client.delete_cookie("csrftoken")
    page = get_page(client, wf.id)
    assert json.loads(page.one("div", data_wtflow_run=True)["data-settings"])[
        "csrf"
    ] == {"cookie": "csrftoken", "header": "X-CSRFToken"}
    assert client.get_cookie("csrftoken") is not None  # the page set it

    url = f"/workflows/{wf.id}/tasks/{wf.tasks[1].id}"
    assert client.put(url, json={}).status_code == 400  # no token
    assert client.put(url, json={}, headers=csrf_headers(client)).status_code == 202


def test_api_url_of_the_pages_script(app, monkeypatch):
    with app.test_request_context():
        assert api_url() == "/workflows"  # the REST blueprint is in this app
    monkeypatch.setitem(app.config, "WTFLOW_UI_API_URL", "https://api.example.org/wf/")
    with app.test_request_context():
        assert api_url() == "https://api.example.org/wf"

    # A UI application without the REST blueprint (an Invenio instance).
    ui_app = Flask("ui")
    InvenioWTFlow(ui_app)
    ui_app.register_blueprint(create_ui_blueprint(ui_app))
    with ui_app.test_request_context():
        assert api_url() == "/api/workflows"
    # No invenio-i18n there: the templates get English strings.
    assert ui_app.jinja_env.from_string("{{ _('Tasks') }}").render() == "Tasks"


#
# In a real browser
#
@pytest.fixture(scope="module")
def server(app):
    """Serve the application on a free port, from a thread."""
    httpd = make_server("localhost", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_port}"
    httpd.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium, driven by Playwright.

    Not named ``browser``: pytest-invenio reserves that name for its Selenium
    tests (and skips them unless ``E2E=yes``).
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture()
def page(chromium, server):
    """A fresh browser tab on the test server; the test fails on a script error."""
    context = chromium.new_context(
        base_url=server, viewport={"width": 1280, "height": 900}
    )
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    errors = []
    tab.on("pageerror", lambda error: errors.append(error))
    yield tab
    context.close()
    assert errors == []


def browser_login(page, user):
    """Log in through the REST login view, sharing the tab's cookies."""
    res = page.request.post("/login", data={"email": user.email, "password": PASSWORD})
    assert res.ok, res.text()


def node(task_id, status=None):
    """Selector of a task's box in the graph (in a status)."""
    selector = f'.wtflow-node[data-task-id="{task_id}"]'
    return selector + (f'[data-status="{status}"]' if status else "")


def row(page, task_id):
    """Locator of a task's row in the table."""
    return page.locator(f'tr[data-task-id="{task_id}"]')


@needs_chromium
def test_browser_sees_a_run_advance_fail_and_restart(clean, broker, page, tmp_path):
    admin = create_user("admin", admin=True)
    run = Workflow.create(
        "encode-video",
        data={"video_id": 7, "marker_dir": str(tmp_path)},
        created_by=admin.id,
    ).start()
    probe, thumbnails, encode, release = [str(t.id) for t in run.tasks]
    browser_login(page, admin)
    polls = []
    api = f"/workflows/{run.id}"
    page.on("request", lambda r: polls.append(r) if r.url.endswith(api) else None)
    page.goto(f"{PAGES}/{run.id}")
    expect(page.locator(node(probe))).to_have_attribute("data-status", "queued")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-kind", "live")

    broker.deliver(lambda message: message.name.endswith(".probe"))
    box = page.locator(node(probe, "success") + " .wtflow-node-box")
    box.wait_for()  # turned green without a reload:
    assert box.evaluate("e => getComputedStyle(e).stroke") == "rgb(22, 163, 74)"
    expect(row(page, probe).locator('[data-field="status"]')).to_have_text("Success")
    expect(row(page, probe).locator('[data-field="message"]')).to_have_text(
        "reading streams"
    )
    expect(page.locator('[data-field="run-status"]')).to_have_text("Running")

    broker.deliver_all()  # thumbnails succeeds, encode fails, release is cancelled
    page.locator(node(encode, "failure")).wait_for()
    expect(page.locator('[data-field="run-status"]')).to_have_text("Failure")
    expect(page.locator(node(release))).to_have_attribute("data-status", "cancelled")
    restart = row(page, encode).locator('[data-action="restart-task"]')
    expect(restart).to_be_visible()
    expect(row(page, release).locator('[data-action="restart-task"]')).to_be_hidden()
    expect(page.locator('[data-action="restart"]')).to_be_visible()
    expect(page.locator('[data-action="stop"]')).to_be_hidden()
    error = page.locator(f'tr[data-error-for="{encode}"]')
    expect(error.locator("summary")).to_have_text("RuntimeError: encoder crashed")
    error.locator("summary").click()  # the traceback, on demand
    expect(error.locator(".wtflow-traceback")).to_contain_text(
        'raise RuntimeError("encoder crashed")'
    )
    expect(page.locator("[data-history-body]")).to_contain_text("Failure")
    page.screenshot(path=tmp_path / "failed.png", full_page=True)

    (tmp_path / "fixed").touch()
    restart.click()  # a PUT to the REST API, with the CSRF token
    page.locator(node(encode, "queued")).wait_for()
    expect(page.locator(node(encode) + ' [data-field="label"]')).to_have_text(
        "Queued · attempt 2"
    )
    expect(page.locator("[data-alert]")).to_be_hidden()
    expect(error).to_be_hidden()

    broker.deliver_all()  # encode runs again and succeeds, then release
    page.locator(node(release, "success")).wait_for()
    expect(page.locator('[data-field="run-status"]')).to_have_text("Success")
    expect(row(page, encode).locator('[data-field="attempt"]')).to_have_text("2")
    expect(page.locator("[data-live-indicator]")).to_have_attribute(
        "data-kind", "finished"
    )
    expect(page.locator("[data-history-body] tr").first).to_contain_text("Success")
    page.screenshot(path=tmp_path / "status-page.png", full_page=True)
    assert (tmp_path / "status-page.png").stat().st_size > 10_000

    seen = len(polls)
    time.sleep(1)  # five poll intervals: polling has stopped
    assert len(polls) == seen


@needs_chromium
def test_browser_pages_through_child_runs(clean, broker, page, tmp_path):
    admin = create_user("admin", admin=True)
    qualities = [f"q{i}" for i in range(7)]
    run = Workflow.create(
        "transcode-all",
        data={"video_id": 1, "qualities": qualities},
        created_by=admin.id,
    ).start()
    broker.deliver()  # the parent task spawns seven children and waits
    browser_login(page, admin)
    page.goto(f"{PAGES}/{run.id}")

    children = page.locator("[data-children]")
    expect(children.locator("[data-children-total]")).to_have_text("7")
    expect(children.locator("tbody tr")).to_have_count(5)
    expect(children.locator("[data-children-range]")).to_have_text("1–5 of 7")
    expect(children.locator('tbody [data-status="running"]')).to_have_count(5)
    expect(children.locator('[data-children-page="prev"]')).to_be_disabled()
    children.locator('[data-children-page="next"]').click()
    expect(children.locator("[data-children-range]")).to_have_text("6–7 of 7")
    expect(children.locator("tbody tr")).to_have_count(2)
    expect(children.locator("tbody tr").first).to_contain_text("transcode_all #0")
    page.screenshot(path=tmp_path / "children.png", full_page=True)

    broker.deliver_all()  # the children succeed, the parent joins them
    expect(children.locator('tbody [data-status="success"]')).to_have_count(2)
    expect(page.locator('[data-field="run-status"]')).to_have_text("Success")

    children.locator("tbody tr a").first.click()
    expect(page.locator("h1")).to_have_text("transcode-one")
    expect(page.locator(".wtflow-breadcrumbs")).to_contain_text("Parent run")


@needs_chromium
def test_browser_redraws_a_graph_that_grows(clean, broker, page, tmp_path):
    admin = create_user("admin", admin=True)
    run = Workflow.create("grow-from-callback", created_by=admin.id).start()
    browser_login(page, admin)
    page.goto(f"{PAGES}/{run.id}")
    expect(page.locator(".wtflow-node")).to_have_count(2)  # add, populate()
    expect(page.locator("[data-children]")).to_be_hidden()
    page.evaluate("window.sameDocument = true")

    broker.deliver()  # add succeeds; its callback adds tasks and a sub-workflow
    expect(page.locator(".wtflow-node")).to_have_count(7)
    expect(page.locator("tr[data-task-id]")).to_have_count(7)
    grown = Workflow.get(run.id)
    total = next(t for t in grown.tasks if t.name == "total")
    depends_on = " ".join(sorted(str(i) for i in grown.dependencies()[total.id]))
    expect(page.locator(node(total.id))).to_have_attribute(
        "data-depends-on", depends_on
    )
    expect(page.locator("[data-children] tbody tr")).to_have_count(1)
    assert page.evaluate("window.sameDocument") is True  # not reloaded

    broker.deliver_all()
    expect(page.locator('[data-field="run-status"]')).to_have_text("Success")
    expect(page.locator('.wtflow-node[data-status="success"]')).to_have_count(7)
    statuses = page.locator("[data-history-body] .wtflow-status-label")
    expect(statuses).to_have_text(
        ["Success", "Running", "Waiting", "Running", "Pending"]
    )
    page.screenshot(path=tmp_path / "grown.png", full_page=True)


@needs_chromium
def test_browser_starts_and_stops_a_run(clean, broker, page):
    admin = create_user("admin", admin=True)
    run = Workflow.create("add-chain", created_by=admin.id)
    browser_login(page, admin)
    page.goto(f"{PAGES}/{run.id}")
    expect(page.locator('[data-action="restart"]')).to_be_hidden()

    page.locator('[data-action="start"]').click()
    expect(page.locator('[data-field="run-status"]')).to_have_text("Running")
    expect(page.locator('[data-action="start"]')).to_be_hidden()
    expect(page.locator(node(run.tasks[0].id))).to_have_attribute(
        "data-status", "queued"
    )
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('[data-action="stop"]').click()
    expect(page.locator('[data-field="run-status"]')).to_have_text("Cancelled")
    expect(page.locator('[data-field="run-message"]')).to_have_text("Stopped.")
    expect(page.locator('.wtflow-node[data-status="cancelled"]')).to_have_count(3)
    expect(page.locator('[data-action="stop"]')).to_be_hidden()
    expect(page.locator('[data-action="restart"]')).to_be_visible()
