# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The OpenAPI 3 document of the REST API, generated with apispec."""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

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


class FieldErrorSchema(Schema):
    """One field of a request that failed validation."""

    field = fields.String()
    message = fields.String()


class ErrorSchema(Schema):
    """Body of every error response."""

    status = fields.Integer(required=True)
    message = fields.String(required=True)
    errors = fields.List(fields.Nested(FieldErrorSchema))


HIT = WorkflowSchema(exclude=("tasks", "children"))
"""A run as listings show it: without its tasks and children."""


class WorkflowListSchema(Schema):
    """A page of runs."""

    hits = fields.List(fields.Nested(HIT))
    total = fields.Integer()
    links = fields.Dict(keys=fields.String(), values=fields.String())


class HistorySchema(Schema):
    """Recorded changes, oldest first."""

    hits = fields.List(fields.Nested(HistoryEntrySchema))


ERRORS = {
    "400": "Malformed request: the body or arguments name the problem.",
    "401": "Authentication required.",
    "403": "Permission denied.",
    "404": "No such run or task.",
    "409": "Not allowed in the current status.",
    "413": "Request body too large.",
    "415": "The body is not JSON.",
}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok_code, ok_schema, description, *errors):
    responses = {ok_code: {"description": description, **_json(ok_schema)}}
    if ok_code == "200":
        responses["304"] = {"description": "Not modified (If-None-Match)."}
    for code in ("401", "403", "404", *errors):
        responses[code] = {"description": ERRORS[code], **_json("Error")}
    return responses


def _completion_responses():
    """A completion's answers: never 404, so that a wrong token learns nothing."""
    return {
        "200": {
            "description": "Applied, or the same completion again: the task now.",
            **_json("TaskDetail"),
        },
        "400": {"description": ERRORS["400"], **_json("Error")},
        "401": {"description": "No bearer token.", **_json("Error")},
        "403": {
            "description": "Wrong, expired or another task's token, or no such "
            "task (the same answer).",
            **_json("Error"),
        },
        "409": {
            "description": "The token is an earlier attempt's, or the task was "
            "stopped, failed, timed out or completed with another body.",
            **_json("Error"),
        },
        "413": {"description": ERRORS["413"], **_json("Error")},
        "415": {"description": ERRORS["415"], **_json("Error")},
    }


def _path_params(*names):
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
        for name in names
    ]


def _body(schema, required=False):
    return {"required": required, **_json(schema)}


def build_spec(prefix, version):
    """Return the OpenAPI document (a dict) of the REST API.

    :param prefix: the blueprint's URL prefix (``WTFLOW_URL_PREFIX``).
    :param version: the API version to state.
    """
    spec = APISpec(
        title="invenio-wtflow",
        version=version,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Durable, visible workflows of Celery tasks."},
    )
    for name, schema in [
        ("Error", ErrorSchema),
        ("WorkflowCreate", WorkflowCreateSchema),
        ("Data", DataSchema),
        ("Completion", CompletionSchema),
        ("Workflow", WorkflowSchema),
        ("WorkflowHit", HIT),
        ("WorkflowList", WorkflowListSchema),
        ("TaskDetail", TaskDetailSchema),
        ("History", HistorySchema),
    ]:
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme(
        "completionToken",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "The token of a delegated task's ticket.",
        },
    )
    workflow, task = _path_params("workflow_id"), _path_params("workflow_id", "task_id")
    spec.path(
        path=f"{prefix}/",
        operations={
            "get": {
                "summary": "List the runs the caller may read, newest first.",
                "parameters": [{"in": "query", "schema": ListArgsSchema}],
                "responses": _responses("200", "WorkflowList", "A page.", "400"),
            },
            "post": {
                "summary": "Create a run (and start it); a known key returns it.",
                "requestBody": _body("WorkflowCreate", required=True),
                "responses": {
                    **_responses("201", "Workflow", "Created.", "400", "413", "415"),
                    "200": {
                        "description": "The run with that key.",
                        **_json("Workflow"),
                    },
                },
            },
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}",
        parameters=workflow,
        operations={
            "get": {
                "summary": "A run with its tasks.",
                "responses": _responses("200", "Workflow", "The run."),
            },
            "post": {
                "summary": "Start a pending run; data is merged.",
                "requestBody": _body("Data"),
                "responses": _responses(
                    "202", "Workflow", "Started.", "400", "409", "413", "415"
                ),
            },
            "put": {
                "summary": "Restart the run (same id); data is merged.",
                "requestBody": _body("Data"),
                "responses": _responses(
                    "202", "Workflow", "Restarted.", "400", "409", "413", "415"
                ),
            },
            "delete": {
                "summary": "Stop the run.",
                "responses": _responses("202", "Workflow", "Stopped.", "409"),
            },
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}/history",
        parameters=workflow,
        operations={
            "get": {
                "summary": "Recorded changes of the run, oldest first.",
                "responses": _responses("200", "History", "The history."),
            }
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}/children",
        parameters=workflow,
        operations={
            "get": {
                "summary": "The runs the run's tasks spawned, in spawn order.",
                "parameters": [{"in": "query", "schema": PageArgsSchema}],
                "responses": _responses("200", "WorkflowList", "A page.", "400"),
            }
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}/tasks/{{task_id}}",
        parameters=task,
        operations={
            "get": {
                "summary": "One task, with its result and error.",
                "responses": _responses("200", "TaskDetail", "The task."),
            },
            "put": {
                "summary": "Restart the task and what depends on it.",
                "requestBody": _body("Data"),
                "responses": _responses(
                    "202", "TaskDetail", "Restarted.", "400", "409", "413", "415"
                ),
            },
            "delete": {
                "summary": "Stop the task and cancel what depends on it.",
                "responses": _responses("202", "TaskDetail", "Stopped.", "409"),
            },
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}/tasks/{{task_id}}/complete",
        parameters=task,
        operations={
            "post": {
                "summary": "Complete a delegated task (no login: the token is "
                "the credential).",
                "security": [{"completionToken": []}],
                "requestBody": _body("Completion", required=True),
                "responses": _completion_responses(),
            }
        },
    )
    spec.path(
        path=f"{prefix}/{{workflow_id}}/tasks/{{task_id}}/history",
        parameters=task,
        operations={
            "get": {
                "summary": "Recorded changes of the task, oldest first.",
                "responses": _responses("200", "History", "The history."),
            }
        },
    )
    return spec.to_dict()
