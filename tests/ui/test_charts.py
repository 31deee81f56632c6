"""The dashboard's drawing geometry: lines break at gaps, a lone value is a dot, ticks are
whole offsets with short labels, and the lineage puts each version right of its parent."""

from __future__ import annotations

import math

import pytest

from app.ui.charts import COL, HEIGHT, LEFT, RIGHT, WIDTH, _nice, line_chart, lineage


def test_lines_break_at_gaps_and_a_lone_value_is_a_dot():
    xs = [99, 199, 299, 399, 499, 599]
    c = line_chart("loss", xs, [("pre", "s-pre", [0.5, 0.4, None, 0.3, math.nan, 0.2])])
    s = c.series[0]
    assert len(s.lines) == 1 and len(s.lines[0].split()) == 2  # 99, 199
    assert len(s.dots) == 2  # 399 and 599 stand alone
    assert s.last == 0.2
    xs_drawn = [float(p.split(",")[0]) for p in s.lines[0].split()] + [x for x, _ in s.dots]
    assert min(xs_drawn) == LEFT and max(xs_drawn) == WIDTH - RIGHT


def test_values_map_onto_the_plot_linearly_from_zero():
    c = line_chart("loss", [0, 10], [("pre", "s-pre", [1.0, 2.0])])
    (a, b) = [tuple(map(float, p.split(","))) for p in c.series[0].lines[0].split()]
    top, bottom = c.top, c.bottom
    assert b[1] == pytest.approx(top) and a[1] == pytest.approx(bottom - (bottom - top) / 2)
    assert c.y_ticks[0][1] == "0" and c.y_ticks[-1][1] == "2"


def test_empty_and_single_point_charts():
    assert line_chart("x", [], [("a", "s", [])]).empty
    assert line_chart("x", [1, 2], [("a", "s", [None, math.inf])]).empty
    one = line_chart("x", [5], [("a", "s", [0.3])])
    assert [label for _, label in one.x_ticks] == ["5"] and len(one.series[0].dots) == 1
    assert one.series[0].dots[0][0] == pytest.approx((LEFT + WIDTH - RIGHT) / 2)
    assert 0 < one.series[0].dots[0][1] < HEIGHT


@pytest.mark.parametrize(
    ("v", "label"),
    [(0, "0"), (499, "499"), (0.1234, "0.123"), (25_124.75, "25.1k"), (100_000, "100k"), (10**7, "10M"),
     (2.5e10, "25G"), (2**62, "4.61e+18")],
)  # fmt: skip
def test_tick_labels_are_short(v, label):
    assert _nice(v) == label


def test_offset_ticks_are_whole_offsets():
    c = line_chart("x", [99, 1099], [("a", "s", [1.0, 2.0])])
    assert [label for _, label in c.x_ticks] == ["99", "349", "599", "849", "1099"]


def test_lineage_puts_each_version_right_of_its_parent():
    vs = [
        {"version": 1, "parent": None, "operation": "init"},
        {"version": 2, "parent": 1, "operation": "online"},
        {"version": 3, "parent": 2, "operation": "prune"},
        {"version": 4, "parent": 2, "operation": "quantize"},
        {"version": 5, "parent": 99, "operation": "batch"},  # its parent is not listed: a root
    ]
    g = lineage(vs, {"production": 3})
    pos = {n.version: (n.x, n.y) for n in g.nodes}
    assert pos[2][0] - pos[1][0] == COL and pos[3][0] == pos[4][0] == pos[2][0] + COL
    assert pos[3][1] != pos[4][1] and pos[5][0] == pos[1][0]
    assert sorted(e.label for e in g.edges) == ["online", "prune", "quantize"]
    assert next(n for n in g.nodes if n.version == 3).aliases == ["production"]
    assert g.width >= max(x for x, _ in pos.values()) and g.height >= max(y for _, y in pos.values())
