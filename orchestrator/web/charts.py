"""Charts as inline SVG drawn on the server, so pages need no script: a release's stage
timeline, its heartbeat around the release, a fleet's rollout progress and the small bar
charts of the DORA page. Every mark carries a <title> (a tooltip, and words for a screen
reader); colours come from classes styled in ship.css."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from markupsafe import Markup


@dataclass(frozen=True)
class Span:
    """One stage of a release on its timeline; `end` None means still running."""

    stage: str
    start: datetime
    end: datetime | None
    lane: int = 0  # 0: the release's own path; 1: beside it (CI)


@dataclass(frozen=True)
class Mark:
    """A moment on the heartbeat chart (live, breach, rolled back)."""

    kind: str
    at: datetime
    label: str
    value: float | None = None  # a point to circle, for a breach


@dataclass(frozen=True)
class Line:
    kind: str  # observed | baseline | threshold
    points: Sequence[tuple[datetime, float]]
    label: str


def _svg(width: int, height: int, body: list[str], label: str, kind: str,
         stretch: bool = True) -> Markup:
    """An SVG that fills its box; a chart without text may stretch to any width."""
    fit = ' preserveAspectRatio="none"' if stretch else ""
    return Markup(f'<svg class="chart {kind}" viewBox="0 0 {width} {height}"{fit} role="img" '
                  f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
                  + "".join(body) + "</svg>")


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _scale(low: float, high: float, out_low: float, out_high: float) -> Callable[[float], float]:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def duration(seconds: float | None) -> str:
    """Pipeline seconds as people read them: 45s, 4.0m, 2.5h."""
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def timeline(spans: Sequence[Span], origin: datetime, until: datetime, label: str) -> Markup:
    """The stages of one release as bars on a time axis from `origin` to `until`."""
    width, height = 600, 34
    x = _scale(0, max((until - origin).total_seconds(), 1.0), 0, width)
    body = ['<rect class="lane" x="0" y="3" width="600" height="18"/>']
    for span in spans:
        end = span.end or until
        left = x((span.start - origin).total_seconds())
        right = max(x((end - origin).total_seconds()), left + 2)
        y, h = (3, 18) if span.lane == 0 else (24, 7)
        took = duration((end - span.start).total_seconds())
        state, ongoing = ("running", " ongoing") if span.end is None else ("took", "")
        body.append(f'<rect class="st st-{escape(span.stage)}{ongoing}" '
                    f'data-stage="{escape(span.stage)}" x="{left:.1f}" y="{y}" '
                    f'width="{right - left:.1f}" height="{h}">'
                    f"{_title(f'{span.stage}: {state} {took}')}</rect>")
    return _svg(width, height, body, label, "timeline")


def progress(hosts: int, started: int, converged: int, failed: int, label: str) -> Markup:
    """Hosts converged, started (not yet converged), failed and waiting, as one bar."""
    width, height = 300, 14
    x = _scale(0, max(hosts, 1), 0, width)
    parts = [("converged", converged), ("started", max(0, started - converged)),
             ("failed", failed), ("waiting", max(0, hosts - started - failed))]
    body, left = [], 0.0
    for kind, count in parts:
        if count:
            body.append(f'<rect class="pg-{kind}" x="{left:.1f}" y="0" width="{x(count):.1f}" '
                        f'height="{height}">{_title(f"{count} {kind}")}</rect>')
            left += x(count)
    return _svg(width, height, body, label, "progress")


def bars(values: Sequence[float | None], titles: Sequence[str], label: str,
         kind: str = "") -> Markup:
    """A small bar chart (one bar per day on the DORA page); None draws no bar."""
    width, height = 300, 56
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    step = width / max(len(values), 1)
    y = _scale(0, top, height - 2, 4)
    body = [f'<line class="axis" x1="0" y1="{height - 1}" x2="{width}" y2="{height - 1}"/>']
    for i, (value, title) in enumerate(zip(values, titles, strict=True)):
        if value is None:
            continue
        top_y = min(y(value), height - 2)  # a zero still shows, as a sliver
        body.append(f'<rect class="bar {kind}" x="{i * step + 1:.1f}" y="{top_y:.1f}" '
                    f'width="{max(step - 2, 1):.1f}" height="{height - 1 - top_y:.1f}">'
                    f"{_title(title)}</rect>")
    return _svg(width, height, body, label, "bars")


def heartbeat(lines: Sequence[Line], marks: Sequence[Mark], start: datetime, end: datetime,
              label: str, unit: str = "/min") -> Markup:
    """A metric around a release: what was observed, the baseline it was held to and the
    breach threshold, with the moment it went live, any breach and the rollback marked."""
    width, height, left, right, top, bottom = 480, 240, 50, 8, 18, 28
    values = [v for line in lines for _, v in line.points]
    high = max(values, default=1.0) * 1.15 or 1.0
    x = _scale(0, max((end - start).total_seconds(), 1.0), left, width - right)
    y = _scale(0, high, height - bottom, top)

    def at(when: datetime) -> float:
        return x((when - start).total_seconds())

    body = [f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" '
            f'y2="{height - bottom}"/>']
    for tick in (0.0, high / 2, high / 1.15):
        body.append(f'<text class="tick" x="{left - 4}" y="{y(tick) + 4:.1f}" '
                    f'text-anchor="end">{tick:,.0f}</text>'
                    f'<line class="grid" x1="{left}" y1="{y(tick):.1f}" x2="{width - right}" '
                    f'y2="{y(tick):.1f}"/>')
    for when, anchor in ((start, "start"), (end, "end")):
        body.append(f'<text class="tick" x="{at(when):.1f}" y="{height - 8}" '
                    f'text-anchor="{anchor}">{when:%H:%M}</text>')
    for line in lines:
        if not line.points:
            continue
        path = " ".join(f"{at(t):.1f},{y(v):.1f}" for t, v in line.points)
        body.append(f'<polyline class="hb-{escape(line.kind)}" data-line="{escape(line.kind)}" '
                    f'points="{path}">{_title(line.label)}</polyline>')
    shown = [mark for mark in marks if start <= mark.at <= end]
    for row, mark in enumerate(sorted(shown, key=lambda m: m.at)):
        mx = at(mark.at)
        label_y = top - 4 + 16 * (row % 3)  # marks close in time: labels on their own rows
        body.append(f'<g class="mark mark-{escape(mark.kind)}" data-mark="{escape(mark.kind)}">'
                    f"{_title(mark.label)}"
                    f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{height - bottom}"/>'
                    f'<text x="{mx + 3:.1f}" y="{label_y}">{escape(mark.kind)}</text>')
        if mark.value is not None:
            body.append(f'<circle cx="{mx:.1f}" cy="{y(mark.value):.1f}" r="5"/>')
        body.append("</g>")
    return _svg(width, height, body, f"{label} ({unit})", "heartbeat", stretch=False)
