# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Durable, visible workflows of Celery tasks for Invenio."""

from .api import Workflow
from .ext import InvenioWTFlow
from .proxies import current_wtflow
from .tasks import workflow_task

__version__ = "0.1.0.dev0"

__all__ = (
    "__version__",
    "InvenioWTFlow",
    "Workflow",
    "current_wtflow",
    "workflow_task",
)
