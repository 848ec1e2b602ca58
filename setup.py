# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Durable, visible Celery workflows for Invenio."""

from setuptools import setup

setup()
