# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Errors raised by the engine and the Python API."""


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
