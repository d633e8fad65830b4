"""A line chart of latency against offered load, written as SVG by hand, so
that the suite needs no plotting library.  The y axis is logarithmic."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 760, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 70, 60  # margins around the plotting area
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def nice_step(span: float, ticks: int = 6) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``ticks`` ticks."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def latency_svg(series: dict[str, list[tuple[float, float]]], title: str, subtitle: str) -> str:
    """``series`` maps a name to its (offered msg/s, p99 ms) points; points
    without a latency (nan, zero) are left out."""
    lines = {
        name: sorted((x, y) for x, y in points if x > 0 and y > 0 and math.isfinite(y))
        for name, points in series.items()
    }
    xs = [x for points in lines.values() for x, _ in points] or [1.0]
    ys = [y for points in lines.values() for _, y in points] or [1.0]
    x_step = nice_step(max(xs))
    x_max = math.ceil(max(xs) / x_step) * x_step
    y_lo = math.floor(math.log10(min(ys)))
    y_hi = max(math.ceil(math.log10(max(ys))), y_lo + 1)
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + x / x_max * width

    def py(y: float) -> float:
        return TOP + height - (math.log10(y) - y_lo) / (y_hi - y_lo) * height

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="26" text-anchor="middle" font-size="16" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{WIDTH / 2}" y="46" text-anchor="middle" fill="#555">{escape(subtitle)}</text>',
    ]
    for decade in range(y_lo, y_hi + 1):
        y = py(10.0**decade)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + width}" y2="{y:.1f}" stroke="#ccc"/>'
        )
        out.append(
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{10.0**decade:g}</text>'
        )
        if decade < y_hi:
            for minor in range(2, 10):
                y = py(minor * 10.0**decade)
                out.append(
                    f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + width}" y2="{y:.1f}" '
                    'stroke="#eee"/>'
                )
                if minor in (2, 5):
                    out.append(
                        f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#777">'
                        f"{minor * 10.0**decade:g}</text>"
                    )
    for i in range(round(x_max / x_step) + 1):
        x = px(i * x_step)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + height}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{TOP + height + 18}" text-anchor="middle">'
            f"{i * x_step:,.0f}</text>"
        )
    out += [
        f'<rect x="{LEFT}" y="{TOP}" width="{width}" height="{height}" fill="none" stroke="#333"/>',
        f'<text x="{LEFT + width / 2}" y="{HEIGHT - 14}" text-anchor="middle">'
        "offered load (messages a second)</text>",
        f'<text transform="translate(20 {TOP + height / 2}) rotate(-90)" text-anchor="middle">'
        "p99 latency (ms, log scale)</text>",
    ]
    key_width = 60 + 7 * max((len(name) for name in lines), default=0)
    out.append(
        f'<rect x="{LEFT + 6}" y="{TOP + 6}" width="{key_width}" height="{20 * len(lines) + 4}" '
        'fill="white" fill-opacity="0.85" stroke="#ccc"/>'
    )
    for i, (name, points) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}">'
            f"<title>{escape(name)}: {x:,.0f} msg/s, p99 {y:.1f} ms</title></circle>"
            for x, y in points
        ]
        key_y = TOP + 18 + 20 * i
        out += [
            f'<line x1="{LEFT + 14}" y1="{key_y}" x2="{LEFT + 40}" y2="{key_y}" '
            f'stroke="{colour}" stroke-width="2"/>',
            f'<circle cx="{LEFT + 27}" cy="{key_y}" r="4" fill="{colour}"/>',
            f'<text x="{LEFT + 48}" y="{key_y + 4}">{escape(name)}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"
