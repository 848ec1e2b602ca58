# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Benchmarks of invenio-wtflow against plain Celery (run ``benchmarks/run.sh``)."""
