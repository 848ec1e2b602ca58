# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Sphinx configuration for invenio-wtflow."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("."))  # openapi_reference

from invenio_wtflow import __version__  # noqa: E402

project = "invenio-wtflow"
author = "invenio-wtflow authors"
copyright = "2026, invenio-wtflow authors"
version = __version__
release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # Documents Celery tasks (``@shared_task``, ``@workflow_task``) found by
    # ``automodule :members:``; needs the class-based autodoc below.
    "celery.contrib.sphinx",
    # The REST reference, rendered from the OpenAPI document the API serves.
    "openapi_reference",
]

# No intersphinx: the build must work offline. References to other
# libraries cannot be resolved, so nitpicky mode (-n) ignores them.
_external = "|".join(
    [
        # third-party libraries
        "alembic",
        "celery",
        "click",
        "flask",
        "flask_celeryext",
        "flask_principal",
        "flask_sqlalchemy",
        "invenio_access",
        "invenio_accounts",
        "invenio_base",
        "invenio_celery",
        "invenio_db",
        "invenio_rest",
        "kombu",
        "marshmallow",
        "packaging",
        "sqlalchemy",
        "sqlalchemy_continuum",
        "sqlalchemy_utils",
        "werkzeug",
        # standard library
        "abc",
        "collections",
        "contextlib",
        "contextvars",
        "datetime",
        "decimal",
        "enum",
        "functools",
        "importlib",
        "logging",
        "pathlib",
        "re",
        "threading",
        "types",
        "typing",
        "uuid",
    ]
)
nitpick_ignore_regex = [
    (r"py:.*", rf"~?({_external})(\..*)?"),
    # Short names produced by type hints and by autodoc for common types.
    (
        r"py:.*",
        r"(UUID|datetime|timedelta|Enum|Session|Query|Mapped|Signature|"
        r"Task|Celery|Flask|Blueprint|Response|Schema|Permission|Need|"
        r"LocalProxy|Model|Timestamp|EntryPoint|Callable|Iterable|Iterator|"
        r"Mapping|Sequence|Any|Self|NoneType|ContextVar|Logger)",
    ),
    (r"py:.*", r"None|True|False"),
]

autodoc_member_order = "bysource"
# Sphinx 9 rewrote autodoc; celery.contrib.sphinx plugs into the class-based
# implementation, which Sphinx 7 and 8 always use.
autodoc_use_legacy_class_based = True
# Celery copies its settings onto a Task subclass when it binds it, and
# Flask-SQLAlchemy annotates ``query`` on every model: without this, autodoc
# documents those inherited attributes (with Celery's own Sphinx roles) as
# ours. Our members always have their own docstrings (pydocstyle checks).
autodoc_inherit_docstrings = False

templates_path = []
exclude_patterns = ["_build"]
master_doc = "index"

html_theme = "alabaster"
html_static_path = []


def _skip_context_proxies(app, what, name, obj, skip, options):
    """Skip Werkzeug proxies: inspecting them needs an application context.

    ``api.rst`` documents ``current_wtflow`` by hand instead.
    """
    from werkzeug.local import LocalProxy

    if type(obj) is LocalProxy:
        return True
    return None


def setup(app):
    """Connect the autodoc hooks."""
    app.connect("autodoc-skip-member", _skip_context_proxies)
