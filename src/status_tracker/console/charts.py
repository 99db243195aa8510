"""Charts drawn on the server as SVG: no chart library, no script, nothing to fetch. Colours
come from the stylesheet (classes), since the Content-Security-Policy allows no inline style."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT, AXIS, RIGHT = 640, 200, 28, 16


def _label(start: datetime, interval: str) -> str:
    return f"{start:%H:%M}" if interval == "hour" else f"{start:%m-%d}"


def volume(series: Sequence[Mapping[str, Any]], interval: str) -> Markup:
    """Stacked bars per bucket: delivered, failed, and the rest (still on their way)."""
    top = max((bucket["total"] for bucket in series), default=0) or 1
    slot = (WIDTH - AXIS - RIGHT) / max(len(series), 1)
    bars = []
    for index, bucket in enumerate(series):
        x = AXIS + index * slot + slot * 0.1
        y = HEIGHT - AXIS
        other = bucket["total"] - bucket["delivered"] - bucket["failed"]
        title = (
            f"{bucket['start']:%Y-%m-%d %H:%M} UTC: {bucket['total']} messages, "
            f"{bucket['delivered']} delivered, {bucket['failed']} failed, {other} other"
        )
        parts = []
        for kind, count in (("delivered", bucket["delivered"]), ("failed", bucket["failed"]),
                            ("other", other)):  # fmt: skip
            height = count / top * (HEIGHT - AXIS - 8)
            y -= height
            parts.append(
                f'<rect class="bar-{kind}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{slot * 0.8:.1f}" height="{height:.1f}"/>'
            )
        bars.append(f"<g><title>{escape(title)}</title>{''.join(parts)}</g>")
    step = max(1, len(series) // 6)
    labels = [
        f'<text x="{AXIS + (i + 0.5) * slot:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{_label(bucket['start'], interval)}</text>"
        for i, bucket in enumerate(series)
        if i % step == 0
    ]
    return _svg(
        "volume",
        f"Messages per {interval}, peak {top if series else 0}",
        f'<text x="2" y="14">{top if series else 0}</text>' + "".join(bars) + "".join(labels),
    )


def delivery_rate(series: Sequence[Mapping[str, Any]], interval: str) -> Markup:
    """Delivered out of delivered and failed, per bucket, as a line over 0-100 %."""
    slot = (WIDTH - AXIS - RIGHT) / max(len(series), 1)
    points = []
    for index, bucket in enumerate(series):
        settled = bucket["delivered"] + bucket["failed"]
        if settled:
            rate = bucket["delivered"] / settled
            x = AXIS + (index + 0.5) * slot
            y = 8 + (1 - rate) * (HEIGHT - AXIS - 8)
            points.append((x, y, f"{bucket['start']:%Y-%m-%d %H:%M} UTC: {rate:.1%}"))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
    dots = "".join(
        f'<circle class="rate" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{escape(t)}</title></circle>'
        for x, y, t in points
    )
    return _svg(
        "rate",
        f"Delivery rate per {interval}",
        '<text x="2" y="14">100%</text>'
        f'<text x="2" y="{HEIGHT - AXIS}">0%</text>'
        f'<polyline class="rate" points="{line}"/>' + dots,
    )


def _svg(name: str, title: str, content: str) -> Markup:
    return Markup(
        f'<svg class="chart" data-chart="{name}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">'
        f'<line class="axis" x1="{AXIS}" y1="{HEIGHT - AXIS}" x2="{WIDTH}" y2="{HEIGHT - AXIS}"/>'
        f"{content}</svg>"
    )
