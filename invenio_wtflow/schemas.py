# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Marshmallow schemas of the REST API (request bodies, arguments, responses).

Written for marshmallow 3 so that marshmallow 4 needs no change: no
``context``, ``load_default``/``dump_default``, validators that raise.
"""

import json

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from .models import NodeKind, TaskStatus, WorkflowStatus

MAX_INTEGER = 2**31 - 1
"""Largest integer argument accepted (a database INTEGER)."""


class _Strict(Schema):
    """Refuse unknown fields."""

    class Meta:
        """Unknown fields are an error."""

        unknown = RAISE


class WorkflowCreateSchema(_Strict):
    """Body of ``POST /workflows/``."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    data = fields.Dict(keys=fields.String(), load_default=dict)
    start = fields.Boolean(load_default=False)
    key = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=255)
    )


class DataSchema(_Strict):
    """Body of start and restart requests: data merged over the run's data."""

    data = fields.Dict(keys=fields.String(), load_default=dict)


def _storable(value):
    """Refuse what JSON columns cannot store (``NaN``, ``Infinity``)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise ValidationError(f"Not storable as JSON: {exc}.") from exc


class CompletionSchema(_Strict):
    """Body of ``POST /workflows/<id>/tasks/<task_id>/complete``."""

    status = fields.String(
        required=True,
        validate=validate.OneOf([TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value]),
        metadata={"description": "How the external system's work ended."},
    )
    result = fields.Raw(
        load_default=None,
        allow_none=True,
        validate=_storable,
        metadata={"description": "The task's result (any JSON value)."},
    )
    message = fields.String(
        load_default=None,
        allow_none=True,
        metadata={"description": "The task's message; for a failure, its error."},
    )


class PageArgsSchema(_Strict):
    """Query arguments of a paginated listing (``GET /workflows/<id>/children``)."""

    page = fields.Integer(
        load_default=1, validate=validate.Range(min=1, max=MAX_INTEGER)
    )
    size = fields.Integer(
        load_default=None, validate=validate.Range(min=1, max=MAX_INTEGER)
    )


class ListArgsSchema(PageArgsSchema):
    """Query arguments of ``GET /workflows/``."""

    name = fields.String(validate=validate.Length(min=1, max=255))
    status = fields.String(validate=validate.OneOf([s.value for s in WorkflowStatus]))
    created_by = fields.Integer(validate=validate.Range(min=0, max=MAX_INTEGER))
    parent = fields.UUID(metadata={"description": "Only the children of this run."})


class TaskSchema(Schema):
    """A task in a run's listing."""

    id = fields.UUID()
    name = fields.String()
    position = fields.Integer()
    kind = fields.String(
        allow_none=True,
        validate=validate.OneOf([k.value for k in NodeKind]),
        metadata={
            "description": "null for a Celery task; populate or callback for a "
            "node the root's orchestrator runs."
        },
    )
    key = fields.String(
        allow_none=True,
        metadata={"description": "Key a node added at run time was declared with."},
    )
    status = fields.String(validate=validate.OneOf([s.value for s in TaskStatus]))
    message = fields.String(allow_none=True)
    progress = fields.Float(allow_none=True)
    attempt = fields.Integer()
    retries = fields.Integer()
    queued = fields.DateTime(attribute="queued_at", allow_none=True)
    started = fields.DateTime(attribute="started_at", allow_none=True)
    finished = fields.DateTime(attribute="finished_at", allow_none=True)
    depends_on = fields.List(fields.UUID())


class TaskDetailSchema(TaskSchema):
    """One task, with its result and error."""

    workflow_id = fields.UUID()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    traceback = fields.String(allow_none=True)
    deadline = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "When the current attempt's delegation to an external "
            "system expires; null when it did not delegate."
        },
    )
    links = fields.Dict()


class ChildrenSummarySchema(Schema):
    """The child runs of a run, in its detail."""

    total = fields.Integer(metadata={"description": "Number of child runs."})


class WorkflowSchema(Schema):
    """A workflow run."""

    id = fields.UUID()
    name = fields.String()
    key = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf([s.value for s in WorkflowStatus]))
    message = fields.String(allow_none=True)
    data = fields.Dict()
    created_by = fields.Integer(allow_none=True)
    created = fields.DateTime()
    updated = fields.DateTime()
    started = fields.DateTime(attribute="started_at", allow_none=True)
    finished = fields.DateTime(attribute="finished_at", allow_none=True)
    parent_id = fields.UUID(
        allow_none=True, metadata={"description": "Parent run; null for a root."}
    )
    parent_task_id = fields.UUID(
        allow_none=True, metadata={"description": "Task run that spawned this run."}
    )
    root_id = fields.UUID(
        allow_none=True,
        metadata={"description": "Top run of the tree (a root's own id)."},
    )
    spawn_index = fields.Integer(
        allow_none=True,
        metadata={"description": "Spawn order within the parent task, from 0."},
    )
    tasks = fields.List(fields.Nested(TaskSchema))
    children = fields.Nested(ChildrenSummarySchema)
    links = fields.Dict()


class HistoryEntrySchema(Schema):
    """One recorded change of a run or a task."""

    transaction_id = fields.Integer()
    issued_at = fields.DateTime()
    user_id = fields.Integer(allow_none=True)
    operation = fields.Integer()
    status = fields.String()
    message = fields.String(allow_none=True)
    progress = fields.Float(allow_none=True)
    attempt = fields.Integer(allow_none=True)
    retries = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
