# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Layered layout of a run's graph, which the status page draws as SVG."""

from dataclasses import dataclass, field

NODE_WIDTH = 184
"""Width of a task's box, in SVG user units (pixels at scale 1)."""

NODE_HEIGHT = 58
"""Height of a task's box."""

GAP_X = 16
"""Horizontal space between two boxes of one layer."""

GAP_Y = 56
"""Vertical space between two layers, where the edges run."""

ROW_GAP = 12
"""Vertical space between the rows of a layer too wide for one row."""

MARGIN = 12
"""Space around the drawing."""

FRAME_PADDING = 8
"""Space between a wrapped layer's boxes and the frame drawn around them."""

MAX_COLUMNS = 6
"""Boxes per row; a wider layer (a big group) wraps into several rows."""

COMPACT_OVER = 24
"""A layer with more tasks than this shows each as a small square."""

CHIP_SIZE = 26
"""Side of a task's square in a compact layer."""

CHIP_GAP = 6
"""Space between two squares of a compact layer."""


@dataclass
class Node:
    """A task's box: its top-left corner and size."""

    task: object
    layer: int
    x: float
    y: float
    width: float = NODE_WIDTH
    height: float = NODE_HEIGHT
    compact: bool = False


@dataclass
class Frame:
    """The box drawn around a layer that wraps into several rows."""

    layer: int
    size: int
    x: float
    y: float
    width: float
    height: float


@dataclass
class Layout:
    """Where everything goes: boxes, frames, edges (SVG path data) and size."""

    nodes: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    width: float = 0
    height: float = 0


def layers(tasks, dependencies):
    """Group tasks by depth: a task's layer is one below its deepest upstream.

    Tasks keep their given order inside a layer, so the members of a group
    stay side by side in graph order.

    >>> layers(["a", "b", "c", "d"], {"c": ["a", "b"], "d": ["c"]})
    [['a', 'b'], ['c'], ['d']]

    :param tasks: objects with an ``id``, or ids, in graph order.
    :param dependencies: mapping of a task id to the ids it depends on.
    :returns: a list of layers, each a list of the given tasks.
    """
    ids = [getattr(t, "id", t) for t in tasks]
    known = set(ids)
    depth = {}
    for start in ids:
        stack, visiting = [start], {start}
        while stack:
            top = stack[-1]
            upstream = [d for d in dependencies.get(top, ()) if d in known]
            todo = [d for d in upstream if d not in depth and d not in visiting]
            if todo:
                stack.extend(todo)
                visiting.update(todo)
                continue
            stack.pop()
            visiting.discard(top)
            depth[top] = 1 + max((depth.get(d, -1) for d in upstream), default=-1)
    grouped = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for task, id_ in zip(tasks, ids):
        grouped[depth[id_]].append(task)
    return grouped


def layout(tasks, dependencies, columns=MAX_COLUMNS):
    """Place the tasks' boxes layer under layer and route the edges.

    Each layer is centred; a layer with more than ``columns`` tasks wraps
    into rows inside a frame, and its edges attach to the frame rather than
    to every box (a group of 200 draws one edge to the task that joins it).
    A layer of more than :data:`COMPACT_OVER` tasks shows small squares.

    :param tasks: objects with an ``id``, in graph order.
    :param dependencies: mapping of a task id to the ids it depends on.
    :param columns: boxes per row before a layer wraps.
    :returns: a :class:`Layout`.
    """
    grouped = layers(tasks, dependencies)
    compact = [len(layer) > COMPACT_OVER for layer in grouped]
    widest = max(
        (min(len(layer), columns) for layer in grouped if len(layer) <= COMPACT_OVER),
        default=0,
    )
    inner = _row_width(columns if any(compact) else widest)
    chips = max((inner + CHIP_GAP) // (CHIP_SIZE + CHIP_GAP), 1)
    result = Layout(width=2 * MARGIN + inner)
    where = {}
    anchors = {}  # layer -> (top, bottom) anchor of its frame, when wrapped
    y = MARGIN
    for number, layer in enumerate(grouped):
        if compact[number]:
            size, gap, per_row = CHIP_SIZE, CHIP_GAP, chips
        else:
            size, gap, per_row = None, GAP_X, columns
        wrapped = len(layer) > per_row or compact[number]
        top = y
        if wrapped:
            y += FRAME_PADDING
        for start in range(0, len(layer), per_row):
            row = layer[start : start + per_row]
            width = _row_width(len(row), size or NODE_WIDTH, gap)
            x = (result.width - width) / 2
            for task in row:
                node = Node(task=task, layer=number, x=x, y=y)
                if size:
                    node.width = node.height = size
                    node.compact = True
                result.nodes.append(node)
                where[getattr(task, "id", task)] = node
                x += node.width + gap
            y += (size or NODE_HEIGHT) + (CHIP_GAP if size else ROW_GAP)
        y -= CHIP_GAP if size else ROW_GAP
        if wrapped:
            y += FRAME_PADDING
            frame = Frame(
                layer=number,
                size=len(layer),
                x=MARGIN - FRAME_PADDING / 2,
                y=top,
                width=result.width - 2 * MARGIN + FRAME_PADDING,
                height=y - top,
            )
            result.frames.append(frame)
            middle = frame.x + frame.width / 2
            anchors[number] = ((middle, frame.y), (middle, frame.y + frame.height))
        y += GAP_Y
    result.height = max(y - GAP_Y + MARGIN, 2 * MARGIN)
    result.edges = _edges(where, dependencies, anchors)
    return result


def _row_width(count, size=NODE_WIDTH, gap=GAP_X):
    return max(count * size + (count - 1) * gap, 0)


def _edges(where, dependencies, anchors):
    """SVG paths from each upstream box (or frame) to each downstream one."""
    paths = []
    seen = set()
    for task_id, node in where.items():
        for upstream_id in dependencies.get(task_id, ()):
            upstream = where.get(upstream_id)
            if upstream is None:
                continue
            start = anchors.get(upstream.layer, (None, None))[1] or (
                upstream.x + upstream.width / 2,
                upstream.y + upstream.height,
            )
            end = anchors.get(node.layer, (None, None))[0] or (
                node.x + node.width / 2,
                node.y,
            )
            if (start, end) in seen:
                continue
            seen.add((start, end))
            (x1, y1), (x2, y2) = start, end
            middle = (y1 + y2) / 2
            paths.append(
                f"M{x1:g},{y1:g} C{x1:g},{middle:g} {x2:g},{middle:g} {x2:g},{y2:g}"
            )
    return paths
