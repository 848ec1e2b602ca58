# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The engine: how workflow runs are compiled, advanced and dispatched."""
