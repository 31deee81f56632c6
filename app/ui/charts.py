"""Geometry for the dashboard's drawings, computed on the server so the pages need no
charting library: line charts of a model's metrics over its log, and the lineage of its
versions as a layered graph. Everything here is plain data for the SVG templates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: the plotting area of a chart, in SVG user units
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 640.0, 220.0, 56.0, 24.0, 12.0, 28.0


@dataclass
class Series:
    name: str
    css: str
    #: SVG polyline ``points`` strings: a gap (no value) breaks the line
    lines: list[str] = field(default_factory=list)
    #: single points drawn as dots (a value with no neighbour)
    dots: list[tuple[float, float]] = field(default_factory=list)
    last: float | None = None


@dataclass
class Chart:
    title: str
    series: list[Series]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    empty: bool
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    bottom: float = HEIGHT - BOTTOM
    right: float = WIDTH - RIGHT
    top: float = TOP


def _nice(v: float) -> str:
    """A tick label: 3 significant digits, with k / M / G for large values."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e13:
        return f"{v:.3g}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= 10 * div:
            return f"{v / div:.3g}{unit}"
    if a >= 1:
        return f"{v:.3g}" if a < 1000 else f"{v:.0f}"
    return f"{v:.3g}"


def _offset_ticks(x0: float, x1: float) -> list[float]:
    """Up to 5 whole offsets from ``x0`` to ``x1`` (one when they are the same)."""
    if x1 - x0 < 1:
        return [x0]
    return sorted({float(round(x0 + (x1 - x0) * i / 4)) for i in range(5)})


def line_chart(title: str, xs: Sequence[float], series: Sequence[tuple[str, str, Sequence[float | None]]]) -> Chart:
    """A chart of ``series`` (``(name, css class, values)``) against ``xs`` (log offsets).

    The y axis runs from ``min(0, lowest)`` to the highest finite value; x from the first
    to the last offset. Values that are None or not finite leave a gap."""
    finite = [v for _, _, vals in series for v in vals if v is not None and math.isfinite(v)]
    if not xs or not finite:
        return Chart(title, [Series(n, c) for n, c, _ in series], [], [], empty=True)
    x0, x1 = float(min(xs)), float(max(xs))
    y0, y1 = min(0.0, min(finite)), max(finite)
    if y1 <= y0:
        y1 = y0 + 1.0
    ticks = _offset_ticks(x0, x1)
    if x1 <= x0:  # one point: in the middle
        x0, x1 = x0 - 1.0, x1 + 1.0

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def sy(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)

    out = []
    for name, css, vals in series:
        s = Series(name, css)
        run: list[tuple[float, float]] = []
        for x, v in [*zip(xs, vals, strict=True), (None, None)]:
            if x is not None and v is not None and math.isfinite(v):
                run.append((sx(float(x)), sy(float(v))))
                s.last = float(v)
                continue
            if len(run) == 1:
                s.dots.append(run[0])
            elif run:
                s.lines.append(" ".join(f"{a:.1f},{b:.1f}" for a, b in run))
            run = []
        out.append(s)
    x_ticks = [(sx(x), _nice(x)) for x in ticks]
    y_ticks = [(sy(y0 + (y1 - y0) * i / 4), _nice(y0 + (y1 - y0) * i / 4)) for i in range(5)]
    return Chart(title, out, x_ticks, y_ticks, empty=False)


@dataclass
class Node:
    version: int
    operation: str
    x: float
    y: float
    aliases: list[str]


@dataclass
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    lx: float
    ly: float


@dataclass
class Lineage:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float


COL, ROW, PAD = 120.0, 46.0, 30.0


def lineage(versions: Sequence[dict[str, Any]], aliases: dict[str, int]) -> Lineage:
    """Versions (``version``, ``parent``, ``operation``) laid out left to right by depth
    (a version sits one column right of its parent; a version whose parent is not in the
    list starts a column-0 root), one row per version in order within its column. Each edge
    goes from parent to child and is labelled with the child's operation."""
    by_number = {int(v["version"]): v for v in versions}
    depth: dict[int, int] = {}
    for n in sorted(by_number):
        p = by_number[n].get("parent")
        depth[n] = depth[p] + 1 if p in depth else 0
    rows: dict[int, int] = {}
    pos: dict[int, tuple[float, float]] = {}
    for n in sorted(by_number):
        d = depth[n]
        r = rows.get(d, 0)
        rows[d] = r + 1
        pos[n] = (PAD + d * COL, PAD + r * ROW)
    names: dict[int, list[str]] = {}
    for a, v in sorted(aliases.items()):
        names.setdefault(v, []).append(a)
    nodes = [Node(n, str(by_number[n].get("operation", "")), *pos[n], names.get(n, [])) for n in sorted(by_number)]
    edges = []
    for n in sorted(by_number):
        p = by_number[n].get("parent")
        if p in pos:
            (x1, y1), (x2, y2) = pos[p], pos[n]
            edges.append(
                Edge(x1 + 22, y1, x2 - 22, y2, str(by_number[n].get("operation", "")), (x1 + x2) / 2, (y1 + y2) / 2 - 6)
            )
    width = PAD * 2 + max((d for d in depth.values()), default=0) * COL + 40
    height = PAD * 2 + (max(rows.values(), default=1) - 1) * ROW + 20
    return Lineage(nodes, edges, width, height)
