# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Proxies to the state of the current application's extension."""

from flask import current_app
from werkzeug.local import LocalProxy

current_wtflow = LocalProxy(lambda: current_app.extensions["invenio-wtflow"])
"""Proxy to the :class:`~invenio_wtflow.ext._WTFlowState` of the current app."""
