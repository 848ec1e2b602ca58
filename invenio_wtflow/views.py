# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""REST API: create, list, start, watch, stop and restart runs and tasks.

Views stay thin: parse the request, check the permission, call the Python API,
serialise. Every response carries an ETag and honours ``If-None-Match``. The
completion of a delegated task needs no login: its bearer token is the
credential.
"""

import hashlib
import json

from flask import Blueprint, current_app, request, url_for
from flask.views import MethodView
from flask_login import current_user
from invenio_rest.errors import FieldError
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from .api import Task, Workflow, complete_task
from .errors import (
    BadRequestError,
    ForbiddenError,
    MissingTokenError,
    NotFoundError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    WTFlowError,
    to_rest_error,
)
from .openapi import build_spec
from .permissions import can
from .schemas import (
    CompletionSchema,
    DataSchema,
    HistoryEntrySchema,
    ListArgsSchema,
    PageArgsSchema,
    TaskDetailSchema,
    WorkflowCreateSchema,
    WorkflowSchema,
)


#
# Helpers
#
class RawJSON(str):
    """A JSON text that a response embeds as it is (see :func:`json_response`)."""


def json_response(payload, status=200, headers=None):
    """Serialise ``payload`` with an ETag; answer 304 when it matches.

    Values of ``payload`` that are :class:`RawJSON` go into the body as they
    are, after the other keys.
    """
    raw = {k: v for k, v in payload.items() if isinstance(v, RawJSON)}
    rest = {k: v for k, v in payload.items() if k not in raw}
    body = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    if raw:
        tail = ",".join(f"{json.dumps(k)}:{v}" for k, v in sorted(raw.items()))
        body = f"{body[:-1]}{',' if rest else ''}{tail}}}"
    response = current_app.response_class(
        body, status=status, mimetype="application/json", headers=headers
    )
    response.set_etag(hashlib.sha256(body.encode()).hexdigest()[:32])
    if request.method in ("GET", "HEAD"):
        response.make_conditional(request)
    return response


def json_body(schema):
    """Load the request's JSON object body with ``schema`` (400/413/415)."""
    limit = current_app.config["WTFLOW_MAX_BODY_SIZE"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"Request body is {request.content_length} bytes; the limit is {limit}."
        )
    request.max_content_length = limit
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLargeError(f"Request body is over {limit} bytes.")
    if not raw.strip():
        payload = {}
    else:
        if not request.is_json:
            raise UnsupportedMediaTypeError()
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise BadRequestError(f"Malformed JSON body: {exc}.")
    if not isinstance(payload, dict):
        raise BadRequestError(
            f"The body must be a JSON object, not {type(payload).__name__}."
        )
    return load(schema, payload)


def load(schema, payload):
    """Validate with a schema; field errors become a 400 naming each field."""
    try:
        return schema.load(payload)
    except ValidationError as exc:
        errors = [
            FieldError(field, "; ".join(_flatten(messages)))
            for field, messages in sorted(exc.normalized_messages().items())
        ]
        names = ", ".join(e.res["field"] for e in errors)
        raise BadRequestError(f"Invalid fields: {names}.", errors=errors)


def _flatten(messages):
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flatten(value)]
    if isinstance(messages, list):
        return [m for value in messages for m in _flatten(value)]
    return [str(messages)]


def check(workflow, action, name=None):
    """Raise 401/403 unless the current user may take ``action``.

    :param workflow: the run, or ``None`` for ``create`` and listing.
    :param action: one of :data:`invenio_wtflow.permissions.ACTIONS`.
    :param name: the definition name whose factory applies.
    """
    if can(action, workflow, name=name):
        return
    if not current_user.is_authenticated:
        raise UnauthorizedError()
    raise ForbiddenError(f"You may not {action.replace('-', ' ')} this workflow.")


def bearer_token():
    """Return the request's bearer token (401 when there is none)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingTokenError()
    return token


def page_args(schema):
    """Load a listing's query arguments; return them with the page size.

    :param schema: a :class:`~invenio_wtflow.schemas.PageArgsSchema`.
    :returns: ``(args, size)``, the size defaulting to
        ``WTFLOW_DEFAULT_PAGE_SIZE`` and at most ``WTFLOW_MAX_PAGE_SIZE``.
    """
    args = load(schema, request.args.to_dict())
    config = current_app.config
    size = args.get("size") or config["WTFLOW_DEFAULT_PAGE_SIZE"]
    if size > config["WTFLOW_MAX_PAGE_SIZE"]:
        raise BadRequestError(
            f"size must be at most {config['WTFLOW_MAX_PAGE_SIZE']}.",
            errors=[FieldError("size", "Too large.")],
        )
    return args, size


def page_response(endpoint, runs, total, page, size, **values):
    """Answer a page of runs (without their tasks) with self/next/prev links.

    :param endpoint: the listing's endpoint, for the links.
    :param runs: the page's :class:`~invenio_wtflow.api.Workflow` objects.
    :param total: the number of runs over all pages.
    :param page: the page number, from 1.
    :param size: the page size.
    :param values: the endpoint's URL values (``workflow_id``).
    """
    query = {k: v for k, v in request.args.items() if k not in ("page", "size")}

    def link(number):
        return url_for(
            endpoint, page=number, size=size, _external=True, **values, **query
        )

    links = {"self": link(page)}
    if page * size < total:
        links["next"] = link(page + 1)
    if page > 1:
        links["prev"] = link(page - 1)
    hits = [dump_workflow(r, with_tasks=False) for r in runs]
    return json_response({"hits": hits, "total": total, "links": links})


def readable_runs(page, size, created_by=None, **filters):
    """Return ``(runs, total)``: a page of the runs the current user may read.

    A user without the permission to read every run sees the runs they
    created; runs whose definition's factory denies reading are left out of
    the page (``total`` still counts them).

    :param page: page number, from 1.
    :param size: runs per page.
    :param created_by: only runs created by this user id.
    :param filters: ``name``, ``status`` and/or ``parent_id`` (see
        :meth:`~invenio_wtflow.api.Workflow.search`).
    :raises UnauthorizedError: when nobody is logged in and anonymous users
        may not read every run.
    """
    if not can("read"):
        if not current_user.is_authenticated:
            raise UnauthorizedError()
        if created_by not in (None, current_user.id):
            return [], 0
        created_by = current_user.id
    runs, total = Workflow.search(
        page=page, size=size, created_by=created_by, **filters
    )
    return [r for r in runs if can("read", r)], total


def get_workflow(workflow_id, action):
    """Load a run and check the permission to take ``action`` on it."""
    workflow = Workflow.get(workflow_id)
    check(workflow, action)
    return workflow


def get_task(workflow_id, task_id, action):
    """Load a task of a run (404 for another run's task) and check ``action``."""
    workflow = get_workflow(workflow_id, action)
    task = Task.get(task_id)
    if task.workflow_id != workflow.id:
        raise NotFoundError(f"Workflow {workflow_id} has no task {task_id}.")
    return workflow, task


def workflow_links(workflow):
    """Links of a run."""
    return {
        "self": url_for(
            "invenio_wtflow.workflow", workflow_id=workflow.id, _external=True
        ),
        "history": url_for(
            "invenio_wtflow.workflow_history", workflow_id=workflow.id, _external=True
        ),
        "children": url_for(
            "invenio_wtflow.workflow_children", workflow_id=workflow.id, _external=True
        ),
    }


def dump_workflow(workflow, with_tasks=True):
    """Serialise a run.

    :param with_tasks: add its tasks with their dependencies and the number
        of its children (3 queries, however many tasks and children); the
        listings leave them out.
    """
    model = workflow.model
    payload = {
        "id": model.id,
        "name": model.name,
        "key": model.key,
        "status": model.status,
        "message": model.message,
        "data": model.data,
        "created_by": model.created_by,
        "created": model.created,
        "updated": model.updated,
        "started_at": model.started_at,
        "finished_at": model.finished_at,
        "parent_id": model.parent_id,
        "parent_task_id": model.parent_task_id,
        "root_id": model.root_id,
        "spawn_index": model.spawn_index,
        "links": workflow_links(workflow),
    }
    if not with_tasks:
        return WorkflowSchema(exclude=("tasks", "children")).dump(payload)
    payload["children"] = {"total": workflow.count_children()}
    dumped = WorkflowSchema(exclude=("tasks",)).dump(payload)
    dumped["tasks"] = dump_task_list(workflow)
    return dumped


def dump_task_list(workflow):
    """A run's task listing as :class:`RawJSON`, rendered by the database if it can."""
    rendered = workflow.task_list_json()
    if rendered is None:
        rendered = json.dumps(dump_task_rows(workflow), separators=(",", ":"))
    return RawJSON(rendered)


def _iso(value):
    """A datetime as :class:`~marshmallow.fields.DateTime` dumps it."""
    return None if value is None else value.isoformat()


def dump_task_rows(workflow):
    """Serialise a run's tasks as :class:`.schemas.TaskSchema` would.

    Written out by hand from :meth:`~invenio_wtflow.api.Workflow.task_rows`
    (a test keeps both equal): marshmallow costs more than the query for a
    run of 10,000 tasks.
    """
    edges = workflow.dependencies()
    return [
        {
            "id": str(row.id),
            "name": row.name,
            "position": row.position,
            "kind": row.kind,
            "key": (row.signature or {}).get("key"),
            "status": row.status,
            "message": row.message,
            "progress": None if row.progress is None else float(row.progress),
            "attempt": row.attempt,
            "retries": row.retries,
            "queued": _iso(row.queued_at),
            "started": _iso(row.started_at),
            "finished": _iso(row.finished_at),
            "depends_on": sorted(str(id_) for id_ in edges.get(row.id, ())),
        }
        for row in workflow.task_rows()
    ]


def _task_payload(model, depends_on):
    return {
        "id": model.id,
        "workflow_id": model.workflow_id,
        "name": model.name,
        "position": model.position,
        "kind": model.kind,
        "key": (model.signature or {}).get("key"),
        "status": model.status,
        "message": model.message,
        "progress": model.progress,
        "attempt": model.attempt,
        "retries": model.retries,
        "queued_at": model.queued_at,
        "started_at": model.started_at,
        "finished_at": model.finished_at,
        "depends_on": sorted(depends_on, key=str),
        "result": model.result,
        "error": model.error,
        "traceback": model.traceback,
    }


def dump_task(workflow, task):
    """Serialise one task with its result, error and delegation deadline."""
    edges = workflow.dependencies()
    payload = _task_payload(task.model, edges.get(task.id, []))
    payload["deadline"] = task.deadline
    payload["links"] = {
        "self": url_for(
            "invenio_wtflow.task",
            workflow_id=workflow.id,
            task_id=task.id,
            _external=True,
        ),
        "workflow": workflow_links(workflow)["self"],
    }
    return TaskDetailSchema().dump(payload)


def dump_history(entries):
    """Serialise history entries, oldest first."""
    return {"hits": HistoryEntrySchema(many=True).dump(entries)}


#
# Resources
#
class WorkflowListResource(MethodView):
    """``/workflows/``: list and create runs."""

    def get(self):
        """List runs the caller may read, newest first, paginated."""
        args, size = page_args(ListArgsSchema())
        runs, total = readable_runs(
            args["page"],
            size,
            created_by=args.get("created_by"),
            name=args.get("name"),
            status=args.get("status"),
            parent_id=args.get("parent"),
        )
        return page_response(".workflow_list", runs, total, args["page"], size)

    def post(self):
        """Create a run (and start it); with a known key, return that run."""
        body = json_body(WorkflowCreateSchema())
        check(None, "create", name=body["name"])
        if body["start"]:
            check(None, "start", name=body["name"])  # before anything is written
        workflow = Workflow.create(
            body["name"],
            data=body["data"],
            key=body["key"],
            created_by=current_user.id if current_user.is_authenticated else None,
            start=body["start"],
        )
        existed = not workflow.created_now
        payload = dump_workflow(Workflow.get(workflow.id))
        return json_response(
            payload,
            status=200 if existed else 201,
            headers={"Location": payload["links"]["self"]},
        )


class WorkflowResource(MethodView):
    """``/workflows/<id>``: read, start, restart, stop a run."""

    def get(self, workflow_id):
        """The run with its tasks."""
        return json_response(dump_workflow(get_workflow(workflow_id, "read")))

    def post(self, workflow_id):
        """Start the run, merging the body's data over its data."""
        workflow = get_workflow(workflow_id, "start")
        body = json_body(DataSchema())
        workflow.start(**body["data"])
        return json_response(dump_workflow(Workflow.get(workflow.id)), status=202)

    def put(self, workflow_id):
        """Restart the run (same id), merging the body's data."""
        workflow = get_workflow(workflow_id, "restart")
        body = json_body(DataSchema())
        workflow.restart(**body["data"])
        return json_response(dump_workflow(Workflow.get(workflow.id)), status=202)

    def delete(self, workflow_id):
        """Stop the run."""
        workflow = get_workflow(workflow_id, "stop")
        workflow.stop()
        return json_response(dump_workflow(Workflow.get(workflow.id)), status=202)


class WorkflowChildrenResource(MethodView):
    """``/workflows/<id>/children``: the runs a run's tasks spawned."""

    def get(self, workflow_id):
        """In spawn order, paginated; only the children the caller may read."""
        workflow = get_workflow(workflow_id, "read")
        args, size = page_args(PageArgsSchema())
        runs, total = workflow.children(page=args["page"], size=size)
        return page_response(
            ".workflow_children",
            [r for r in runs if can("read", r)],
            total,
            args["page"],
            size,
            workflow_id=workflow.id,
        )


class TaskResource(MethodView):
    """``/workflows/<id>/tasks/<task_id>``: read, restart, stop one task."""

    def get(self, workflow_id, task_id):
        """The task with its result and error."""
        workflow, task = get_task(workflow_id, task_id, "task-read")
        return json_response(dump_task(workflow, task))

    def put(self, workflow_id, task_id):
        """Restart the task and what depends on it, merging the body's data."""
        workflow, task = get_task(workflow_id, task_id, "task-restart")
        body = json_body(DataSchema())
        task.restart(**body["data"])
        return json_response(dump_task(workflow, Task.get(task.id)), status=202)

    def delete(self, workflow_id, task_id):
        """Stop the task (and cancel what depends on it)."""
        workflow, task = get_task(workflow_id, task_id, "task-stop")
        task.stop()
        return json_response(dump_task(workflow, Task.get(task.id)), status=202)


class TaskCompletionResource(MethodView):
    """``/workflows/<id>/tasks/<task_id>/complete``: an external system reports."""

    def post(self, workflow_id, task_id):
        """Complete a delegated task; the bearer token is the credential.

        A replay of the applied completion answers like the first one, with
        the task as it is now.
        """
        token = bearer_token()
        body = json_body(CompletionSchema())
        complete_task(
            task_id,
            token,
            body["status"],
            body["result"],
            body["message"],
            workflow_id=workflow_id,
            origin=request.remote_addr,
        )
        task = Task.get(task_id)
        return json_response(dump_task(Workflow.get(task.workflow_id), task))


class WorkflowHistoryResource(MethodView):
    """``/workflows/<id>/history``: the run's recorded changes."""

    def get(self, workflow_id):
        """Oldest first."""
        return json_response(dump_history(get_workflow(workflow_id, "read").history()))


class TaskHistoryResource(MethodView):
    """``/workflows/<id>/tasks/<task_id>/history``: the task's changes."""

    def get(self, workflow_id, task_id):
        """Oldest first."""
        _, task = get_task(workflow_id, task_id, "task-read")
        return json_response(dump_history(task.history()))


class OpenAPIResource(MethodView):
    """``/workflows/openapi.json``: the OpenAPI 3 document of this API."""

    def get(self):
        """Generated from the schemas with apispec."""
        from . import __version__

        prefix = current_app.config["WTFLOW_URL_PREFIX"]
        return json_response(build_spec(prefix, __version__))


def create_blueprint(app):
    """Create the REST blueprint (registered through ``api_blueprints``).

    :param app: the Flask application.
    """
    blueprint = Blueprint(
        "invenio_wtflow", __name__, url_prefix=app.config["WTFLOW_URL_PREFIX"]
    )
    routes = [
        ("/", WorkflowListResource, "workflow_list"),
        ("/openapi.json", OpenAPIResource, "openapi"),
        ("/<workflow_id>", WorkflowResource, "workflow"),
        ("/<workflow_id>/history", WorkflowHistoryResource, "workflow_history"),
        ("/<workflow_id>/children", WorkflowChildrenResource, "workflow_children"),
        ("/<workflow_id>/tasks/<task_id>", TaskResource, "task"),
        (
            "/<workflow_id>/tasks/<task_id>/complete",
            TaskCompletionResource,
            "task_complete",
        ),
        (
            "/<workflow_id>/tasks/<task_id>/history",
            TaskHistoryResource,
            "task_history",
        ),
    ]
    for rule, view, endpoint in routes:
        blueprint.add_url_rule(rule, view_func=view.as_view(endpoint))

    @blueprint.errorhandler(WTFlowError)
    def domain_error(exc):
        return to_rest_error(exc).get_response()

    @blueprint.errorhandler(405)
    def method_not_allowed(exc):
        error = BadRequestError(f"Method {request.method} is not allowed here.")
        error.code = 405
        return error.get_response()

    return blueprint
