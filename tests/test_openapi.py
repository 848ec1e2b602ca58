# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The OpenAPI document: valid, complete, and the API holds to it (no 5xx)."""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from invenio_access import Permission
from invenio_access.permissions import any_user
from openapi_spec_validator import validate


def allow_all(workflow, action):
    """Let anyone do anything, so that generated requests reach every view."""
    return Permission(any_user)


@pytest.fixture(scope="module")
def app_config(app_config):
    """Open permissions for this module."""
    app_config["WTFLOW_PERMISSION_FACTORY"] = allow_all
    return app_config


@pytest.fixture(scope="module")
def spec(app):
    """The OpenAPI document, as served."""
    with app.test_client() as client:
        res = client.get("/workflows/openapi.json")
    assert res.status_code == 200
    return res.json


def test_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_is_documented(app, spec):
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("invenio_wtflow.") or rule.endpoint.endswith(
            "openapi"
        ):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    documented = {
        (path, method) for path, ops in spec["paths"].items() for method in ops
    } - {(p, "parameters") for p in spec["paths"]}
    assert routes == documented
    assert len(routes) == 13


@pytest.fixture(scope="module")
def api_schema(app, spec):
    """The served document, bound to the app for in-process calls."""
    schema = schemathesis.openapi.from_dict(spec)
    schema.app = app
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error(case, app):
    with app.app_context():
        response = case.call()
    assert response.status_code < 500, response.text
