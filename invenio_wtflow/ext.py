# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The Flask extension and the registry of workflow definitions."""

from celery import Task
from celery.canvas import Signature
from invenio_base.utils import entry_points
from werkzeug.utils import import_string

from . import config
from .cli import wtflow as wtflow_cli
from .engine.sqlite import serialise_sqlite_transactions
from .errors import InvalidDefinitionError, UnknownWorkflowError

ENTRY_POINT_GROUP = "invenio_wtflow.workflows"
"""Entry point group through which packages register definitions by name."""


class _WTFlowState:
    """Per-application state: the registry of definitions."""

    def __init__(self, app, entry_point_group=ENTRY_POINT_GROUP):
        self.app = app
        self.entry_point_group = entry_point_group
        self._entries = None
        self._classes = {}
        self._graphs = {}

    @property
    def entries(self):
        """Registered definitions: name -> configuration dictionary."""
        if self._entries is None:
            entries = {}
            if self.entry_point_group:
                for ep in entry_points(group=self.entry_point_group):
                    entries[ep.name] = {"definition": ep.load()}
            for name, entry in self.app.config["WTFLOW_WORKFLOWS"].items():
                entries[name] = (
                    dict(entry) if isinstance(entry, dict) else {"definition": entry}
                )
            self._entries = entries
        return self._entries

    def register(self, name, definition, **options):
        """Register a definition under ``name`` (replacing any previous one).

        :param name: the workflow name.
        :param definition: a canvas, a ``Workflow`` subclass, or an import
            string to one of them.
        :param options: other configuration (e.g. ``permission_factory``).
        """
        self.entries[name] = {"definition": definition, **options}
        self._classes.pop(name, None)
        self._graphs.pop(name, None)

    def get_workflow_class(self, name):
        """Return the ``Workflow`` subclass registered under ``name``.

        :raises UnknownWorkflowError: when nothing is registered so.
        :raises InvalidDefinitionError: when the definition is not a canvas or
            a ``Workflow`` subclass.
        """
        if name in self._classes:
            return self._classes[name]
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None or "definition" not in entry:
            raise UnknownWorkflowError(name)
        self._classes[name] = _as_workflow_class(name, entry["definition"])
        return self._classes[name]

    def compiled(self, name):
        """Return the graph of the definition registered under ``name``.

        Compiled once, and again only when the name is registered again or
        the class's ``definition`` is replaced by another object (a canvas
        changed in place, or ``compile`` overridden to depend on something
        else, is not seen). The graph is shared: what creates runs from it
        reads it and copies what it stores, never changes it.

        :raises UnknownWorkflowError: when nothing is registered so.
        :raises InvalidDefinitionError: when the definition does not compile.
        """
        cls = self.get_workflow_class(name)
        cached = self._graphs.get(name)
        if cached is None or cached[0] is not cls or cached[1] is not cls.definition:
            cached = self._graphs[name] = (cls, cls.definition, cls.compile())
        return cached[2]

    def permission_factory(self, name=None):
        """Return the permission factory of a definition (or the global one).

        :param name: the workflow name; ``None`` for the global factory.
        """
        entry = self.entries.get(name) or {} if name else {}
        factory = (
            entry.get("permission_factory")
            or self.app.config["WTFLOW_PERMISSION_FACTORY"]
        )
        return import_string(factory) if isinstance(factory, str) else factory

    def limits(self, name):
        """Return ``(max_runs, concurrency_key)`` of a definition, or ``None``.

        Read from the registration (``max_runs``, ``concurrency_key`` in
        ``WTFLOW_WORKFLOWS``), else from the ``Workflow`` subclass's
        attributes. ``concurrency_key`` is a function of the run's data (or an
        import string to one); without it the limit is per definition.

        :raises InvalidDefinitionError: when ``max_runs`` is not a positive
            integer.
        """
        entry = self.entries.get(name) or {}
        cls = self.workflow_class(name)
        max_runs = entry.get("max_runs", getattr(cls, "max_runs", None))
        if max_runs is None:
            return None
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise InvalidDefinitionError(
                f"max_runs of workflow {name!r} must be a positive integer, "
                f"not {max_runs!r}."
            )
        key = entry.get("concurrency_key", getattr(cls, "concurrency_key", None))
        return max_runs, import_string(key) if isinstance(key, str) else key

    def workflow_class(self, name):
        """Like :meth:`get_workflow_class`, but ``None`` when unavailable."""
        try:
            return self.get_workflow_class(name)
        except (UnknownWorkflowError, InvalidDefinitionError):
            return None


def _as_workflow_class(name, definition):
    """Turn a registered definition into a ``Workflow`` subclass."""
    from .api import Workflow

    if isinstance(definition, str):
        try:
            definition = import_string(definition)
        except ImportError as exc:
            raise InvalidDefinitionError(
                f"Definition of workflow {name!r} cannot be imported: {exc}"
            ) from exc
    if isinstance(definition, type) and issubclass(definition, Workflow):
        return definition
    if isinstance(definition, (Signature, Task)):
        return type(f"Workflow[{name}]", (Workflow,), {"definition": definition})
    raise InvalidDefinitionError(
        f"Definition of workflow {name!r} must be a Celery canvas or a Workflow "
        f"subclass, not {definition!r}."
    )


class InvenioWTFlow:
    """Invenio-WTFlow extension."""

    def __init__(self, app=None, **kwargs):
        """Extension initialization."""
        if app:
            self.init_app(app, **kwargs)

    def init_app(self, app, entry_point_group=ENTRY_POINT_GROUP):
        """Flask application initialization."""
        self.init_config(app)
        if app.config["WTFLOW_SQLITE_SERIALIZE"]:
            serialise_sqlite_transactions()
        state = _WTFlowState(app, entry_point_group=entry_point_group)
        app.extensions["invenio-wtflow"] = state
        app.cli.add_command(wtflow_cli)
        return state

    def init_config(self, app):
        """Initialize configuration with the defaults of ``config.py``."""
        for key in dir(config):
            if key.startswith("WTFLOW_"):
                app.config.setdefault(key, getattr(config, key))
