# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Layout of a run's graph on the status page."""

from invenio_wtflow import layout as lay


def positions(result):
    """Map each task to the top-left corner of its box."""
    return {node.task: (node.x, node.y) for node in result.nodes}


def test_layers_follow_the_longest_path_and_keep_graph_order():
    # a -> c, b -> c, c -> e, a -> e (skips a layer), d stands alone.
    dependencies = {"c": ["a", "b"], "e": ["c", "a"]}
    assert lay.layers(list("abcde"), dependencies) == [["a", "b", "d"], ["c"], ["e"]]


def test_layers_of_a_long_chain_need_no_recursion():
    ids = list(range(5000))
    grouped = lay.layers(ids, {i: [i - 1] for i in ids[1:]})
    assert len(grouped) == 5000 and grouped[-1] == [4999]


def test_a_group_sits_side_by_side_and_its_join_below_in_the_middle():
    result = lay.layout(list("abcj"), {"j": list("abc")})
    where = positions(result)
    assert where["a"][1] == where["b"][1] == where["c"][1] < where["j"][1]
    assert where["a"][0] < where["b"][0] < where["c"][0]
    middle = result.width / 2
    assert where["b"][0] + lay.NODE_WIDTH / 2 == middle
    assert where["j"][0] + lay.NODE_WIDTH / 2 == middle
    assert len(result.edges) == 3 and not result.frames
    assert result.height == where["j"][1] + lay.NODE_HEIGHT + lay.MARGIN


def test_a_wide_group_wraps_in_a_frame_with_one_edge_in_and_one_out():
    members = [f"m{i}" for i in range(10)]
    dependencies = {m: ["start"] for m in members}
    dependencies["join"] = members
    result = lay.layout(["start", *members, "join"], dependencies)
    where = positions(result)
    assert len({where[m][1] for m in members}) == 2  # two rows: 6 + 4
    (frame,) = result.frames
    assert frame.size == 10
    assert all(frame.y < where[m][1] < frame.y + frame.height for m in members)
    assert len(result.edges) == 2
    assert not any(node.compact for node in result.nodes)


def test_a_very_wide_group_shows_small_squares():
    members = [f"m{i}" for i in range(200)]
    result = lay.layout([*members, "join"], {"join": members})
    squares = [node for node in result.nodes if node.compact]
    assert len(squares) == 200
    assert {node.width for node in squares} == {lay.CHIP_SIZE}
    rows = {node.y for node in squares}
    assert len(rows) == 6  # 37 squares fit in the width of 6 boxes
    assert result.width == 2 * lay.MARGIN + lay._row_width(lay.MAX_COLUMNS)
    assert len(result.edges) == 1


def test_empty_graph():
    result = lay.layout([], {})
    assert result.nodes == [] and result.edges == []
    assert result.height == 2 * lay.MARGIN
