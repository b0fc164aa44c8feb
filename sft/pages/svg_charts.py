"""The pages' charts as inline-SVG geometry (numbers only; the templates draw them): a histogram of row lengths
against max_length and line charts of loss and metrics against step."""

from __future__ import annotations

import math

WIDTH, HEIGHT = 640, 200  # the chart's viewBox; it scales with the page
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 28  # room for the axis labels
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 4, whole: bool = False) -> list[float]:
    """Round values from low to high, about `count` steps apart (1, 2 or 5 x a power of ten; `whole`: integers)."""
    rough = (high - low) / count
    power = 10 ** math.floor(math.log10(rough))
    step = min((power * m for m in (1, 2, 5, 10)), key=lambda candidate: abs(math.log(candidate / rough)))
    step = max(step, 1) if whole else step
    first = math.ceil(low / step) * step
    return [first + step * i for i in range(int((high - first) / step + 1e-9) + 1)]


def _frame() -> dict:
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM}


def histogram(lengths: list[int], max_length: int | None, bins: int = 30) -> dict | None:
    """Bars of row lengths (tokens) in `bins` equal bins from 0; those past `max_length` are marked `over`, and
    `limit_x` is where max_length falls. None without rows."""
    if not lengths:
        return None
    top = max(max(lengths), max_length or 0) + 1
    step = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil(top / step)
    for length in lengths:
        counts[length // step] += 1
    chart = _frame()
    span_x, span_y = chart["right"] - LEFT, chart["bottom"] - TOP
    width, tallest = span_x / len(counts), max(counts)
    chart["bars"] = [{"x": LEFT + i * width, "w": max(width - 1, 1), "h": span_y * count / tallest,
                      "y": chart["bottom"] - span_y * count / tallest, "count": count, "low": i * step,
                      "high": (i + 1) * step - 1, "over": max_length is not None and (i + 1) * step - 1 > max_length}
                     for i, count in enumerate(counts) if count]
    chart["limit_x"] = LEFT + span_x * (max_length / (len(counts) * step)) if max_length else None
    chart["max_length"] = max_length
    right = len(counts) * step
    chart["x_ticks"] = [{"x": LEFT + span_x * x / right, "label": _number(x)} for x in _ticks(0, right, whole=True)]
    chart["y_ticks"] = [{"y": chart["bottom"] - span_y * y / tallest, "label": _number(y)}
                        for y in _ticks(0, tallest, 2, whole=True)]
    return chart


def line_chart(title: str, series: dict[str, list[tuple[float, float]]]) -> dict | None:
    """Lines of (step, value) points, one per series, on shared axes; None when no series has a point."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(0.0, min(ys)), max(ys)
    x_high, y_high = (x_high if x_high > x_low else x_low + 1), (y_high if y_high > y_low else y_low + 1)
    chart = _frame()
    span_x, span_y = chart["right"] - LEFT, chart["bottom"] - TOP

    def place(x: float, y: float) -> tuple[float, float]:
        return (round(LEFT + span_x * (x - x_low) / (x_high - x_low), 1),
                round(chart["bottom"] - span_y * (y - y_low) / (y_high - y_low), 1))

    chart["title"] = title
    chart["lines"] = [{"name": name, "colour": COLOURS[i % len(COLOURS)],
                       "points": " ".join(f"{px},{py}" for px, py in (place(x, y) for x, y in points)),
                       "dots": [{"x": place(x, y)[0], "y": place(x, y)[1], "step": x, "value": _number(y)}
                                for x, y in points] if len(points) <= 60 else []}
                      for i, (name, points) in enumerate(series.items())]
    chart["x_ticks"] = [{"x": place(x, y_low)[0], "label": _number(x)} for x in _ticks(x_low, x_high, whole=True)]
    chart["y_ticks"] = [{"y": place(x_low, y)[1], "label": _number(y)} for y in _ticks(y_low, y_high, 2)]
    return chart
