# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Status pages: the list of runs and a run's live page (the UI blueprint)."""

import json
import math
from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, render_template, request, url_for
from flask_login import current_user

from .api import Task, Workflow
from .errors import TaskNotFoundError, UnauthorizedError, WorkflowNotFoundError
from .layout import layers, layout
from .models import ACTIVE_TASK_STATUSES, TaskStatus, WorkflowStatus
from .permissions import can
from .proxies import current_wtflow
from .views import readable_runs

PAGE_ACTIONS = ("start", "stop", "restart", "task-restart", "task-read")
"""Actions whose permission decides what a run's page offers."""


#
# Formatting (template filters)
#
def format_time(value):
    """Show a UTC timestamp to the second, or an empty string.

    >>> from datetime import datetime, timezone
    >>> format_time(datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone.utc))
    '2026-01-02 03:04:05'

    :param value: an aware or naive (UTC) :class:`~datetime.datetime`.
    """
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def format_duration(seconds):
    """Say how long something took, the way the page's script does.

    >>> [format_duration(s) for s in (0.42, 12.3, 184, 7500)]
    ['0.4 s', '12 s', '3 min 04 s', '2 h 05 min']

    :param seconds: a number of seconds, or ``None`` (an empty string).
    """
    if seconds is None:
        return ""
    seconds = max(seconds, 0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def elapsed(start, end=None):
    """Seconds from ``start`` to ``end`` (now when ``None``), or ``None``.

    :param start: when it started; ``None`` when it has not.
    :param end: when it finished.
    """
    if start is None:
        return None
    end = end or datetime.now(timezone.utc)
    return (_aware(end) - _aware(start)).total_seconds()


def _aware(value):
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def format_json(value):
    """Show JSON data indented, keys sorted, non-ASCII characters as they are.

    >>> print(format_json({"b": 1, "a": "é"}))
    {
      "a": "é",
      "b": 1
    }
    """
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def short_name(name):
    """The last part of a dotted Celery task name.

    >>> short_name("my_site.tasks.transcode")
    'transcode'
    """
    return name.rsplit(".", 1)[-1]


def is_settled(workflow_status, task_statuses):
    """Whether a run is finished and none of its tasks can still change.

    A run fails as soon as one task fails, while its other tasks may still
    run: its page stays live until they are done.

    :param workflow_status: the run's status.
    :param task_statuses: its tasks' statuses.
    """
    active = {s.value for s in ACTIVE_TASK_STATUSES}
    return WorkflowStatus(workflow_status).is_terminal and not any(
        s in active for s in task_statuses
    )


def restartable(tasks, dependencies):
    """Ids of the tasks a person can restart.

    A finished task can run again, unless a task upstream of it failed: that
    one must be restarted instead (the engine refuses otherwise). The page's
    script applies the same rule to each update.

    >>> from types import SimpleNamespace as T
    >>> tasks = [T(id=1, status="failure"), T(id=2, status="cancelled"),
    ...          T(id=3, status="success")]
    >>> sorted(restartable(tasks, {2: [1]}))
    [1, 3]

    :param tasks: the run's task rows.
    :param dependencies: mapping of a task id to the ids it depends on.
    """
    failed = {t.id for t in tasks if t.status == TaskStatus.FAILURE.value}
    blocked = set()
    for group in layers(tasks, dependencies):
        for task in group:
            upstream = dependencies.get(task.id, ())
            if any(u in failed or u in blocked for u in upstream):
                blocked.add(task.id)
    terminal = {s.value for s in TaskStatus if s.is_terminal}
    return {t.id for t in tasks if t.status in terminal and t.id not in blocked}


#
# Helpers
#
def api_url():
    """The REST API's base URL (no trailing slash) as the page's script sees it.

    See :data:`invenio_wtflow.config.WTFLOW_UI_API_URL`.
    """
    configured = current_app.config["WTFLOW_UI_API_URL"]
    if configured:
        return configured.rstrip("/")
    if "invenio_wtflow" in current_app.blueprints:
        return url_for("invenio_wtflow.workflow_list").rstrip("/")
    return request.script_root + "/api" + current_app.config["WTFLOW_URL_PREFIX"]


def csrf_settings():
    """Cookie and header names of invenio-rest's CSRF protection.

    The page's script copies the cookie's token into the header of the
    requests that change something. When this application sets the cookie
    (invenio-rest's ``CSRFTokenMiddleware``) and the browser has none yet,
    the page's response sets one.
    """
    config = current_app.config
    cookie = config.get("CSRF_COOKIE_NAME", "csrftoken")
    if "invenio-csrf" in current_app.extensions and cookie not in request.cookies:
        from invenio_rest.csrf import reset_token

        reset_token()
    return {"cookie": cookie, "header": config.get("CSRF_HEADER", "X-CSRFToken")}


def deny():
    """Answer a user who may not see the page: log in first, or 403."""
    if current_user.is_authenticated:
        abort(403)
    login_manager = getattr(current_app, "login_manager", None)
    if login_manager is None:
        abort(401)
    return login_manager.unauthorized()


#
# Views
#
def index():
    """List the runs the user may read, newest first, by name and status."""
    statuses = [s.value for s in WorkflowStatus]
    name = request.args.get("name", "").strip() or None
    status = request.args.get("status") or None
    if status not in statuses:
        status = None
    page = max(request.args.get("page", 1, type=int), 1)
    size = current_app.config["WTFLOW_DEFAULT_PAGE_SIZE"]
    try:
        runs, total = readable_runs(page, size, name=name, status=status)
    except UnauthorizedError:
        return deny()

    def page_url(number):
        filters = {"name": name, "status": status}
        return url_for(".index", page=number, **{k: v for k, v in filters.items() if v})

    return render_template(
        "invenio_wtflow/list.html",
        runs=runs,
        total=total,
        page=page,
        pages=max(math.ceil(total / size), 1),
        page_url=page_url,
        name=name,
        status=status,
        names=sorted(current_wtflow.entries),
        statuses=statuses,
    )


def detail(workflow_id):
    """Show a run: graph, tasks, children and history, updated live."""
    try:
        workflow = Workflow.get(workflow_id)
    except WorkflowNotFoundError:
        abort(404)
    if not can("read", workflow):
        return deny()
    tasks = [task.model for task in workflow.tasks]
    dependencies = workflow.dependencies()
    run_url = f"{api_url()}/{workflow.id}"
    allowed = {action: can(action, workflow) for action in PAGE_ACTIONS}
    spawned_by = None
    if workflow.parent_task_id is not None:
        try:
            spawned_by = Task.get(workflow.parent_task_id)
        except TaskNotFoundError:
            pass
    return render_template(
        "invenio_wtflow/detail.html",
        workflow=workflow,
        run=workflow.model,
        tasks=tasks,
        dependencies=dependencies,
        graph=layout(tasks, dependencies),
        allowed=allowed,
        children_total=workflow.count_children(),
        spawned_by=spawned_by,
        live=not is_settled(workflow.status, [t.status for t in tasks]),
        settings={
            "run": run_url,
            "history": f"{run_url}/history",
            "children": f"{run_url}/children",
            "task": f"{run_url}/tasks/",
            "page": url_for(".detail", workflow_id="__id__"),
            "pageSize": current_app.config["WTFLOW_DEFAULT_PAGE_SIZE"],
            "pollInterval": current_app.config["WTFLOW_UI_POLL_INTERVAL"],
            "csrf": csrf_settings(),
        },
        restartable=restartable(tasks, dependencies),
    )


def create_ui_blueprint(app):
    """Create the status pages' blueprint (registered through ``blueprints``).

    :param app: the Flask application.
    """
    blueprint = Blueprint(
        "invenio_wtflow_ui",
        __name__,
        url_prefix=app.config["WTFLOW_UI_URL_PREFIX"],
        template_folder="templates",
        static_folder="static",
    )
    blueprint.add_url_rule("/", "index", index)
    blueprint.add_url_rule("/<workflow_id>", "detail", detail)
    for name, function in (
        ("wtflow_time", format_time),
        ("wtflow_duration", format_duration),
        ("wtflow_elapsed", elapsed),
        ("wtflow_json", format_json),
        ("wtflow_short_name", short_name),
    ):
        blueprint.add_app_template_filter(function, name)
    if "_" not in app.jinja_env.globals:
        # A site without invenio-i18n: show the English strings.
        app.jinja_env.add_extension("jinja2.ext.i18n")
        app.jinja_env.install_null_translations(newstyle=True)
    return blueprint
