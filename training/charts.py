"""Loss and reward curves as plain SVG geometry, drawn by the progress page's template.

No chart library: the admin's Content-Security-Policy allows no inline styles, which JavaScript
chart widgets write; an SVG of lines and circles, coloured by class in staff.css, needs none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 640, 220, 40
# Past this many points a circle per step is clutter; the line still passes through every one.
MAX_MARKERS = 300
CHARTS = (("loss", "Loss"), ("rewards/margins", "Reward margin (chosen - rejected)"))


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    step: int
    value: float


@dataclass(frozen=True)
class Chart:
    """One metric against the training step, in SVG user units."""

    key: str
    title: str
    line: str
    markers: Sequence[Marker]
    steps: tuple[int, int]
    values: tuple[float, float]
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD

    @property
    def bottom(self) -> int:
        return self.height - self.pad

    @property
    def right(self) -> int:
        return self.width - self.pad


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    if high == low:
        return (start + end) / 2
    return start + (value - low) / (high - low) * (end - start)


def line_chart(curve: Sequence[dict[str, float]], key: str, title: str) -> Chart | None:
    """The chart of `key` over the steps that logged it, or None when no step did."""
    points = [(int(p["step"]), float(p[key])) for p in curve if key in p]
    if not points:
        return None
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    lo_s, hi_s, lo_v, hi_v = min(steps), max(steps), min(values), max(values)
    placed = [
        Marker(
            x=round(_scale(s, lo_s, hi_s, PAD, WIDTH - PAD), 1),
            y=round(_scale(v, lo_v, hi_v, HEIGHT - PAD, PAD), 1),  # larger values higher up
            step=s,
            value=v,
        )
        for s, v in points
    ]
    return Chart(
        key=key,
        title=title,
        line=" ".join(f"{m.x},{m.y}" for m in placed),
        markers=placed if len(placed) <= MAX_MARKERS else (),
        steps=(lo_s, hi_s),
        values=(lo_v, hi_v),
    )


def stage_charts(curve: Sequence[dict[str, float]]) -> list[Chart]:
    """The loss chart, and for DPO stages the reward margin chart, of one stage's curve."""
    charts = (line_chart(curve, key, title) for key, title in CHARTS)
    return [chart for chart in charts if chart is not None]
