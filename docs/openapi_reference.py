# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Sphinx directive ``wtflow-openapi``: the REST reference, from the OpenAPI document.

The document is the one the API serves (``GET .../openapi.json``), built by
:func:`invenio_wtflow.openapi.build_spec`, so the reference cannot drift from
the code: every route, method, parameter, body and answer it lists is the
document's.
"""

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from invenio_wtflow import __version__
from invenio_wtflow.config import WTFLOW_URL_PREFIX
from invenio_wtflow.openapi import build_spec

METHODS = ("get", "post", "put", "delete")
"""HTTP methods, in the order the reference lists them."""


def _schema_name(content):
    """The component name of a JSON body or answer, if any."""
    ref = (content or {}).get("application/json", {}).get("schema", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _parameters(operation, inherited):
    lines = []
    for param in inherited + operation.get("parameters", []):
        kind = param.get("schema", {}).get("type", "")
        required = ", required" if param.get("required") else ""
        about = param.get("description", "")
        lines.append(
            f"   * ``{param['name']}`` ({param['in']}, {kind}{required}) {about}"
        )
    return lines


def operation_lines(path, method, operation, inherited):
    """RST lines describing one operation of the document."""
    lines = [f".. rubric:: ``{method.upper()} {path}``", "", operation["summary"], ""]
    params = _parameters(operation, inherited)
    if params:
        lines += ["Parameters:", ""] + params + [""]
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        name = _schema_name(body.get("content"))
        lines += [f"Body ({required}): ``{name}``", ""]
    if operation.get("security"):
        schemes = ", ".join(s for item in operation["security"] for s in item)
        lines += [f"Authentication: ``{schemes}``", ""]
    lines += ["Answers:", ""]
    for code, answer in sorted(operation["responses"].items()):
        name = _schema_name(answer.get("content"))
        shape = f" ``{name}``" if name else ""
        lines.append(f"   * **{code}**{shape}: {answer['description']}")
    return lines + [""]


class OpenAPIReference(SphinxDirective):
    """Render every operation of the REST API's OpenAPI document."""

    def run(self):
        """Parse the generated RST into nodes."""
        spec = build_spec(WTFLOW_URL_PREFIX, __version__)
        lines = []
        for path, item in spec["paths"].items():
            inherited = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    lines += operation_lines(path, method, item[method], inherited)
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


def setup(app):
    """Register the directive."""
    app.add_directive("wtflow-openapi", OpenAPIReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
