# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Actions on workflow runs and the default permission factory."""

from flask_principal import UserNeed
from invenio_access import Permission, action_factory
from invenio_access.permissions import superuser_access

from .proxies import current_wtflow

wtflow_admin_action = action_factory("wtflow-admin")
"""Action need of users who may do everything with every run."""

ACTIONS = (
    "create",
    "read",
    "start",
    "restart",
    "stop",
    "task-read",
    "task-restart",
    "task-stop",
)
"""Actions a permission factory is asked about."""

CREATOR_ACTIONS = frozenset(ACTIONS) - {"create"}
"""Actions the user who created a run may take on it."""


def permission_factory(workflow, action):
    """Default permission: admins and superusers; a run's creator for its run.

    :param workflow: the :class:`~invenio_wtflow.api.Workflow`, or ``None``
        for actions on no particular run (``create``, listing everything).
    :param action: one of :data:`ACTIONS`.
    """
    needs = [wtflow_admin_action, superuser_access]
    created_by = getattr(workflow, "created_by", None)
    if created_by is not None and action in CREATOR_ACTIONS:
        needs.append(UserNeed(created_by))
    return Permission(*needs)


def can(action, workflow=None, name=None):
    """Whether the current user may take ``action``.

    Asks the permission factory of the run's definition, else the global
    one (:data:`~invenio_wtflow.config.WTFLOW_PERMISSION_FACTORY`).

    :param action: one of :data:`ACTIONS`.
    :param workflow: the :class:`~invenio_wtflow.api.Workflow`, or ``None``
        for actions on no particular run.
    :param name: the definition name whose factory applies when there is no
        run (``create``); ``None`` for the global factory.
    """
    name = workflow.name if workflow is not None else name
    return current_wtflow.permission_factory(name)(workflow, action).can()
