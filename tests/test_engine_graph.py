# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Compiling canvases into nodes and edges."""

import pytest
from celery import chain, chord, group

from invenio_wtflow.engine import graph
from invenio_wtflow.engine.graph import call_arguments, compile_canvas, ensure_json
from invenio_wtflow.errors import InvalidDataError, InvalidDefinitionError
from invenio_wtflow.tasks import _LazyData

from .example_tasks import VideoProcessing, add, echo, extract_frames, tsum


def edges(graph):
    """Return ``{position: depends_on}`` of a graph."""
    return {n.position: n.depends_on for n in graph.nodes}


def test_single_signature():
    graph = compile_canvas(add.s(1, 2))
    assert [(n.name, n.args, n.depends_on) for n in graph.nodes] == [
        (add.name, [1, 2], [])
    ]
    assert graph.output == {"task": 0}


def test_chain_passes_results():
    graph = compile_canvas(chain(add.s(1, 2), add.s(3), add.si(4, 5)))
    assert edges(graph) == {0: [], 1: [0], 2: [1]}
    assert [n.input for n in graph.nodes] == [None, {"task": 0}, None]
    assert graph.output == {"task": 2}


def test_chord_joins_group():
    graph = compile_canvas(chord([add.s(1, 1), add.s(2, 2)], tsum.s()))
    assert edges(graph) == {0: [], 1: [], 2: [0, 1]}
    assert graph.nodes[2].input == {"list": [{"task": 0}, {"task": 1}]}


def test_nesting_group_in_chain_in_group():
    canvas = group(
        chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()),
        add.s(5, 5),
    )
    graph = compile_canvas(canvas)
    assert edges(graph) == {0: [], 1: [0], 2: [0], 3: [1, 2], 4: []}
    assert graph.output == {"list": [{"task": 3}, {"task": 4}]}


def test_nested_groups_are_flattened():
    graph = compile_canvas(group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)))
    assert graph.output == {"list": [{"task": 0}, {"task": 1}, {"task": 2}]}


def test_bare_tasks_and_the_seed_definition():
    graph = VideoProcessing.compile()
    names = [n.name.rsplit(".", 1)[-1] for n in graph.nodes]
    assert names == ["extract_metadata", "extract_frames", "transcode", "publish"]
    assert edges(graph) == {0: [], 1: [], 2: [0, 1], 3: [2]}
    assert [n.bare for n in graph.nodes] == [True, True, False, True]
    assert graph.nodes[3].input is None


def test_bare_task_as_definition():
    graph = compile_canvas(extract_frames)
    assert graph.nodes[0].bare and graph.nodes[0].input is None


@pytest.mark.parametrize(
    "canvas",
    [object(), "tests.example_tasks:add", add.chunks([(1, 2)], 1), group()],
)
def test_invalid_definitions(canvas):
    with pytest.raises(InvalidDefinitionError):
        compile_canvas(canvas)


def test_arguments_must_be_json():
    with pytest.raises(InvalidDataError, match="JSON"):
        compile_canvas(add.s(object(), 1))
    with pytest.raises(InvalidDataError, match="JSON"):
        compile_canvas(add.s(float("nan"), 1))
    # As Celery's JSON serializer does: tuples become lists, keys strings.
    assert compile_canvas(add.s((1, 2), {1: "a"})).nodes[0].args == [[1, 2], {"1": "a"}]


def test_plain_celery_tasks_are_refused(app):
    from celery import shared_task

    @shared_task(name="tests.plain_task")
    def plain_task():
        """Not a workflow task."""

    with pytest.raises(InvalidDefinitionError, match="@workflow_task"):
        compile_canvas(chain(add.s(1, 1), plain_task.si()))


def test_call_arguments_fill_only_missing_required_parameters():
    def run(extracted, video_id, quality="480p"):
        pass

    sig = {"args": [], "kwargs": {}, "input": {"task": 0}, "bare": False}
    data = {"video_id": 7, "quality": "1080p", "other": 1}
    assert call_arguments(run, sig, [1], data) == ([[1]], {"video_id": 7})


def test_call_arguments_of_bare_tasks():
    def run(video_id, quality="480p"):
        pass

    sig = {"args": [], "kwargs": {}, "input": None, "bare": True}
    data = {"video_id": 7, "quality": "1080p", "other": 1}
    assert call_arguments(run, sig, None, data) == (
        [],
        {"video_id": 7, "quality": "1080p"},
    )
    assert call_arguments(echo.run, sig, None, data) == ([], data)


def test_call_arguments_load_the_data_only_when_needed():
    def load():
        raise AssertionError("the data was loaded")

    sig = compile_canvas(add.s(1, 2)).nodes[0].signature
    assert call_arguments(add.run, sig, None, _LazyData(load)) == ([1, 2], {})

    def anything(*args, **kwargs):
        """A signature's ``*args`` and ``**kwargs`` take no data."""

    sig = compile_canvas(add.si(3)).nodes[0].signature
    assert call_arguments(anything, sig, None, _LazyData(load)) == ([3], {})
    sig = compile_canvas(add.s(1)).nodes[0].signature
    data = _LazyData(lambda: {"y": 5, "z": 6})
    assert call_arguments(add.run, sig, None, data) == ([1], {"y": 5})
    assert dict(data) == {"y": 5, "z": 6}


def test_a_task_functions_signature_is_read_once():
    graph._kept_signature.cache_clear()
    sig = {"args": [], "kwargs": {}, "input": None, "bare": True}
    for x in (1, 2, 3):
        assert call_arguments(add.run, sig, None, {"x": x, "y": 1}) == (
            [],
            {"x": x, "y": 1},
        )
    info = graph._kept_signature.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_an_unhashable_callable_still_gets_its_data():
    class Run:
        __eq__ = object.__eq__  # no __hash__: unhashable

        def __call__(self, video_id):
            pass

    sig = {"args": [], "kwargs": {}, "input": None, "bare": True}
    assert call_arguments(Run(), sig, None, {"video_id": 7}) == ([], {"video_id": 7})
