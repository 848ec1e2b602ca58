# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Users of the tests: created through invenio-accounts, logged in over REST."""

from datetime import datetime, timezone

from flask import current_app
from flask_security.utils import hash_password
from invenio_access.models import ActionUsers
from invenio_db import db

from invenio_wtflow.permissions import wtflow_admin_action

PASSWORD = "a-long-test-password"
"""Password of every test user."""


def create_user(name, admin=False):
    """Create and commit the user ``<name>@example.org``.

    :param name: the e-mail address's local part.
    :param admin: allow the ``wtflow-admin`` action to the user.
    """
    user = current_app.extensions["security"].datastore.create_user(
        email=f"{name}@example.org",
        password=hash_password(PASSWORD),
        active=True,
        confirmed_at=datetime.now(timezone.utc),
    )
    db.session.commit()
    if admin:
        db.session.add(ActionUsers.allow(wtflow_admin_action, user=user))
        db.session.commit()
    return user


def csrf_headers(client):
    """The header that passes invenio-rest's CSRF check, when the client has a token.

    Like the status page's script, copy the ``csrftoken`` cookie into the
    ``X-CSRFToken`` header (needed only with ``REST_CSRF_ENABLED``).
    """
    cookie = client.get_cookie(current_app.config.get("CSRF_COOKIE_NAME", "csrftoken"))
    if cookie is None:
        return {}
    return {current_app.config.get("CSRF_HEADER", "X-CSRFToken"): cookie.value}


def login(client, user):
    """Log a user in through invenio-accounts' REST login view."""
    client.post("/logout", headers=csrf_headers(client))
    res = client.post(
        "/login",
        json={"email": user.email, "password": PASSWORD},
        headers=csrf_headers(client),
    )
    assert res.status_code == 200, res.get_data(as_text=True)
    return client
