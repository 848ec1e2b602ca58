# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The extension: configuration defaults and the registry of definitions."""

from importlib.metadata import EntryPoint

import pytest
from flask import Flask

from invenio_wtflow import InvenioWTFlow, Workflow, current_wtflow
from invenio_wtflow import ext as ext_module
from invenio_wtflow.errors import UnknownWorkflowError

from .example_tasks import VideoProcessing, whoami


def test_init_sets_config_defaults():
    app = Flask("x")
    InvenioWTFlow(app)
    assert "invenio-wtflow" in app.extensions
    assert app.config["WTFLOW_REQUEUE_AFTER"] == 300
    assert app.config["WTFLOW_WORKFLOWS"] == {}


def test_definitions_from_entry_points_and_config(app, monkeypatch):
    eps = [
        EntryPoint(
            name="from-package",
            value="tests.example_tasks:add_chain",
            group=ext_module.ENTRY_POINT_GROUP,
        ),
        EntryPoint(
            name="video",
            value="tests.example_tasks:fan_out",
            group=ext_module.ENTRY_POINT_GROUP,
        ),
    ]
    monkeypatch.setattr(ext_module, "entry_points", lambda group: eps)
    state = ext_module._WTFlowState(app)
    assert state.get_workflow_class("from-package").definition.tasks
    # The instance's configuration wins over a package's entry point.
    assert state.get_workflow_class("video") is VideoProcessing
    with pytest.raises(UnknownWorkflowError):
        state.get_workflow_class("nothing")


def test_plain_string_config_entry(app):
    current_wtflow.register("by-string", "tests.example_tasks:VideoProcessing")
    assert current_wtflow.get_workflow_class("by-string") is VideoProcessing


def test_bound_task_sees_its_workflow(app, db):
    current_wtflow.register("whoami", whoami)
    wf = Workflow.create("whoami", data={"deposit": "123"}).start()
    assert wf.result == {"id": str(wf.id), "data": {"deposit": "123"}}


def test_a_definition_is_compiled_once_until_it_changes(app):
    from celery import chain

    from .example_tasks import add

    graph = current_wtflow.compiled("video")
    assert current_wtflow.compiled("video") is graph
    assert [n.name for n in graph.nodes] == [
        n.name for n in VideoProcessing.compile().nodes
    ]
    try:
        current_wtflow.register("video", chain(add.si(1, 2), add.s(3)))
        replaced = current_wtflow.compiled("video")
        assert replaced is not graph and len(replaced.nodes) == 2
    finally:
        current_wtflow.register("video", VideoProcessing)
    again = current_wtflow.compiled("video")
    assert again is not graph
    definition = VideoProcessing.definition
    try:
        VideoProcessing.definition = add.si(1, 1)
        assert len(current_wtflow.compiled("video").nodes) == 1
    finally:
        VideoProcessing.definition = definition
    assert len(current_wtflow.compiled("video").nodes) == len(graph.nodes)
