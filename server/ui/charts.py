"""SVG charts drawn on the server: readable without JavaScript, with a <title> and axis
labels, styled by classes from the one stylesheet (no style attributes: the CSP)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from server.ui.format import duration

WIDTH, HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 16, 16, 40


def _path(points: list[tuple[float, float] | None]) -> str:
    """An SVG path through the points, broken where a value is missing."""
    parts: list[str] = []
    pen_up = True
    for point in points:
        if point is None:
            pen_up = True
            continue
        parts.append(f"{'M' if pen_up else 'L'}{point[0]:.1f},{point[1]:.1f}")
        pen_up = False
    return " ".join(parts)


def duration_chart(
    days: Sequence[str], p50: Sequence[int | None], p95: Sequence[int | None], title: str
) -> Markup:
    """p50 and p95 duration per day as two lines on a shared axis (ms, from 0)."""
    values = [v for v in (*p50, *p95) if v is not None]
    top = max(values) if values else 1
    top = max(top, 1)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    count = max(len(days), 1)
    step = plot_w / max(count - 1, 1)

    def x(i: int) -> float:
        return _LEFT + (i * step if count > 1 else plot_w / 2)

    def y(v: int) -> float:
        return _TOP + plot_h - (v / top) * plot_h

    def points(series: Sequence[int | None]) -> list[tuple[float, float] | None]:
        return [None if v is None else (x(i), y(v)) for i, v in enumerate(series)]

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for fraction in (0, 0.5, 1):  # gridlines with their value
        gy = _TOP + plot_h - fraction * plot_h
        out.append(
            f'<line class="grid" x1="{_LEFT}" y1="{gy:.1f}" x2="{WIDTH - _RIGHT}" y2="{gy:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(duration(round(top * fraction)))}</text>"
        )
    label_every = max(1, count // 7)
    for i, day in enumerate(days):
        if i % label_every == 0 or i == count - 1:
            out.append(
                f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - _BOTTOM + 18}"'
                f' text-anchor="middle">{escape(day[5:])}</text>'
            )
    out.append(
        f'<text class="axis" x="{_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}"'
        ' text-anchor="middle">UTC day (month-day)</text>'
    )
    for name, series in (("p95", p95), ("p50", p50)):
        out.append(f'<path class="line {name}" d="{_path(points(series))}"/>')
        for i, v in enumerate(series):
            if v is None:
                continue
            shape = (
                f'<rect class="dot {name}" x="{x(i) - 3.5:.1f}" y="{y(v) - 3.5:.1f}"'
                ' width="7" height="7">'
                if name == "p95"
                else f'<circle class="dot {name}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5">'
            )
            closing = "</rect>" if name == "p95" else "</circle>"
            out.append(
                f"{shape}<title>{escape(days[i])}: {name} {escape(duration(v))}</title>{closing}"
            )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text in it went through escape()


def sparkline(counts: Sequence[int], title: str, width: int = 240, height: int = 36) -> Markup:
    """Runs per hour as bars, oldest left; the title says the total and the peak."""
    peak = max(counts) if counts else 0
    total = sum(counts)
    bar = width / max(len(counts), 1)
    label = f"{title}: {total:,} runs, peak {peak:,} per hour"
    out = [
        f'<svg class="spark" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{escape(label)}"><title>{escape(label)}</title>',
        f'<line class="base" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/>',
    ]
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        h = max(1.0, (count / peak) * (height - 2))
        out.append(
            f'<rect class="bar" x="{i * bar:.2f}" y="{height - h:.2f}"'
            f' width="{max(bar - 0.5, 0.5):.2f}" height="{h:.2f}"/>'
        )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text in it went through escape()
