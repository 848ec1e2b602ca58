# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""The engine returns what plain Celery returns for the same canvas."""

import pytest
from celery import chain, chord, group

from invenio_wtflow import Workflow, current_wtflow

from .example_tasks import add, current, echo, mul, tsum

CANVASES = {
    "signature": add.s(2, 3),
    "chain": chain(add.s(1, 2), add.s(3), mul.s(10)),
    "immutable in chain": chain(add.s(1, 2), add.si(5, 5), echo.s("x")),
    "group": group(add.s(1, 1), mul.s(2, 3)),
    "chord": chord([add.s(i, i) for i in range(5)], tsum.s()),
    "chain into group": chain(add.s(1, 1), group(add.s(1), mul.s(3))),
    "group into group": chain(
        group(add.s(1, 1), add.s(2, 2)), group(echo.s(), echo.s())
    ),
    "nested groups": group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)),
    "chain in group": group(chain(add.s(1, 2), mul.s(3)), add.s(7, 0)),
    "group in chain in group": chain(
        group(chain(add.s(1, 1), group(add.s(1), add.s(2))), add.s(5, 5)), echo.s()
    ),
    "chord after chord": chain(
        chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
        group(add.s(1), add.s(2)),
        tsum.s(),
    ),
    "one-member group in chain": chain(group(add.s(3, 3)), echo.s()),
    "partial kwargs": chain(add.s(1, 2), add.s(y=10)),
    "chord into a one-member group": chord([add.s(1, 1), add.s(2, 2)], group(tsum.s())),
    "group into a one-member group": chain(
        group(add.s(1, 1), add.s(2, 2)), group(tsum.s())
    ),
    "chord with a chain body": chord(
        [add.s(1, 1), add.s(2, 2)], chain(tsum.s(), add.s(1))
    ),
    "chain ending in a chord": chain(
        add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s())
    ),
    "group of chords": group(
        chord([add.s(1, 1), add.s(2, 2)], tsum.s()), chord([add.s(3, 3)], tsum.s())
    ),
    "one-member chord header": chord([add.s(1, 1)], echo.s()),
}


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_same_result_as_plain_celery(app, db, name):
    canvas = CANVASES[name]
    expected = canvas.clone().apply().get()
    current_wtflow.register(f"canvas-{name}", canvas)
    wf = Workflow.create(f"canvas-{name}").start()
    assert wf.status == "success"
    assert wf.result == expected


def test_a_body_sees_itself_as_celerys_current_task(app, db):
    """As in plain Celery: ``current_task`` is the task, its request the attempt's."""
    assert current.s().apply().get()[0] == current.name
    current_wtflow.register("current", current.s())
    wf = Workflow.create("current").start()
    assert wf.result == [current.name, wf.tasks[0].model.celery_id]
