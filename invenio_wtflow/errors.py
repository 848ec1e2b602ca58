# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Errors raised by the engine and the Python API, and their REST forms."""

from invenio_rest.errors import FieldError, RESTException


class WTFlowError(Exception):
    """Base class of every error of invenio-wtflow."""


class UnknownWorkflowError(WTFlowError, LookupError):
    """No definition is registered under the given name."""

    def __init__(self, name):
        """Initialise with the unknown name."""
        super().__init__(f"No workflow definition is registered as {name!r}.")
        self.name = name


class InvalidDefinitionError(WTFlowError, TypeError):
    """A definition is not a Celery canvas or a ``Workflow`` subclass."""


class InvalidDataError(WTFlowError, ValueError):
    """Workflow data, arguments or a result cannot be stored as JSON."""


class WorkflowNotFoundError(WTFlowError, LookupError):
    """No workflow run has the given id."""

    def __init__(self, workflow_id):
        """Initialise with the unknown id."""
        super().__init__(f"No workflow run with id {workflow_id!r}.")
        self.workflow_id = workflow_id


class TaskNotFoundError(WTFlowError, LookupError):
    """No task run has the given id."""

    def __init__(self, task_id):
        """Initialise with the unknown id."""
        super().__init__(f"No task run with id {task_id!r}.")
        self.task_id = task_id


class InvalidStateError(WTFlowError, RuntimeError):
    """The operation is not allowed in the run's current status."""


class UnsupportedDatabaseError(WTFlowError, RuntimeError):
    """The database cannot version the engine's changes (it has no upsert).

    The engine runs on PostgreSQL, SQLite and MySQL/MariaDB.
    """


class WaitTimeoutError(WTFlowError, TimeoutError):
    """A run was still unfinished when the time to wait for it ran out."""

    def __init__(self, workflow_id, status):
        """Initialise with the run's id and the status it was last seen in."""
        super().__init__(
            f"Workflow run {workflow_id} is still {status}: gave up waiting for it."
        )
        self.workflow_id = workflow_id
        self.status = status


class SpawnConflictError(WTFlowError, ValueError):
    """A child's key was already used with another definition or other data."""


class MissingTokenError(WTFlowError, PermissionError):
    """A completion of a delegated task came without a token."""

    def __init__(self):
        """Initialise with a fixed message."""
        super().__init__("A completion token is required (Authorization: Bearer).")


class InvalidTokenError(WTFlowError, PermissionError):
    """A completion token is wrong, expired, or not the task's.

    The message is the same whatever the reason, and whether or not the task
    exists: the reason is only logged.
    """

    def __init__(self):
        """Initialise with the one message every rejected token gets."""
        super().__init__("Invalid or expired token.")


class CompletionConflictError(InvalidStateError):
    """A genuine completion token cannot complete the task in its current state.

    The task was restarted (the token belongs to an earlier attempt), stopped,
    timed out, failed, or was completed already with another body.
    """


#
# REST forms (JSON bodies through invenio-rest)
#
class NodeConflictError(InvalidDefinitionError):
    """A node added at run time names, by its key, a node with other arguments."""


class PopulateNotIdempotentError(InvalidDefinitionError):
    """A second call of ``populate()`` changed the graph (``WTFLOW_CHECK_POPULATE``)."""


class WTFlowRESTError(RESTException):
    """A JSON error response: ``{"status": ..., "message": ..., "errors": ...}``."""

    code = 400
    description = "Bad request."

    def __init__(self, description=None, errors=None, **kwargs):
        """Initialise with a message and optional field errors."""
        super().__init__(errors=errors, **kwargs)
        if description is not None:
            self.description = description


class BadRequestError(WTFlowRESTError):
    """The request is malformed or names something invalid."""

    code = 400
    description = "Bad request."


class UnauthorizedError(WTFlowRESTError):
    """The caller is not logged in."""

    code = 401
    description = "Authentication required."


class TokenRequiredError(UnauthorizedError):
    """A completion came without a bearer token."""

    description = "A bearer token is required."

    def get_headers(self, environ=None, scope=None):
        """Ask for a bearer token (RFC 6750)."""
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", "Bearer")]


class ForbiddenError(WTFlowRESTError):
    """The caller may not do this."""

    code = 403
    description = "Permission denied."


class NotFoundError(WTFlowRESTError):
    """No such run or task."""

    code = 404
    description = "Not found."


class ConflictError(WTFlowRESTError):
    """The operation is not allowed in the current status."""

    code = 409
    description = "Conflict."


class PayloadTooLargeError(WTFlowRESTError):
    """The request body is larger than ``WTFLOW_MAX_BODY_SIZE``."""

    code = 413
    description = "Request body too large."


class UnsupportedMediaTypeError(WTFlowRESTError):
    """The request body is not JSON."""

    code = 415
    description = "Expected a JSON body (Content-Type: application/json)."


def to_rest_error(exc):
    """Return the REST form of a domain error.

    :param exc: a :class:`WTFlowError`.
    """
    if isinstance(exc, (WorkflowNotFoundError, TaskNotFoundError)):
        return NotFoundError(str(exc))
    if isinstance(exc, MissingTokenError):
        return TokenRequiredError(str(exc))
    if isinstance(exc, InvalidTokenError):
        return ForbiddenError(str(exc))
    if isinstance(exc, (InvalidStateError, SpawnConflictError)):
        return ConflictError(str(exc))
    if isinstance(exc, UnknownWorkflowError):
        return BadRequestError(str(exc), errors=[FieldError("name", str(exc))])
    if isinstance(exc, InvalidDataError):
        return BadRequestError(str(exc), errors=[FieldError("data", str(exc))])
    error = WTFlowRESTError(str(exc))
    error.code = 500
    return error
