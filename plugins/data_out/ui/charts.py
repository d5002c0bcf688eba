"""Server-rendered SVG charts: no JavaScript library, no CDN, readable in any browser and in a screenshot.

Each point is an element of its own (``<circle class="pt">`` or ``<rect class="bar">``) with a ``<title>``
tooltip, so a person can hover a run and a test can count the points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#be185d")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 180, 56, 12, 12, 22


def _fmt(v: float) -> str:
    if abs(v) >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if abs(v) >= 10_000:
        return f"{v / 1000:.0f}k"
    if float(v).is_integer() or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def _clean(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]


def _scale(lo: float, hi: float) -> tuple[float, float]:
    if lo == hi:
        return (lo - 1, hi + 1) if lo else (0.0, 1.0)
    return (min(lo, 0.0) if lo >= 0 and lo < hi * 0.2 else lo, hi)


def line_chart(
    labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str, unit: str = ""
) -> str:
    """One line per series over the runs in ``labels``; one ``circle.pt`` per run and series with a value."""
    cleaned = {name: _clean(vals) for name, vals in series.items()}
    values = [v for vals in cleaned.values() for v in vals if v is not None]
    n = len(labels)
    head = f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" data-runs="{n}">'
    if not values or not n:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="muted">no data yet</text></svg>'
    lo, hi = _scale(min(values), max(values))
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(i: int) -> float:
        return PAD_L + (iw * i / (n - 1) if n > 1 else iw / 2)

    def y(v: float) -> float:
        return PAD_T + ih - (v - lo) / (hi - lo) * ih

    parts = [head, f'<g class="axis"><line x1="{PAD_L}" y1="{PAD_T + ih}" x2="{W - PAD_R}" y2="{PAD_T + ih}"/>']
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{PAD_L - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{_fmt(tick)}{escape(unit)}</text>')
        parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y(tick):.1f}" x2="{W - PAD_R}" y2="{y(tick):.1f}"/>')
    parts.append(f'<text x="{PAD_L}" y="{H - 6}">{escape(labels[0])}</text>')
    if n > 1:
        parts.append(f'<text x="{W - PAD_R}" y="{H - 6}" text-anchor="end">{escape(labels[-1])}</text>')
    parts.append("</g>")
    for idx, (name, vals) in enumerate(cleaned.items()):
        color = PALETTE[idx % len(PALETTE)]
        pts = [(x(i), y(v)) for i, v in enumerate(vals) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        radius = 2.5 if n <= 120 else 1.2
        for i, v in enumerate(vals):
            if v is None:
                continue
            tip = f"{name} · {labels[i]}: {_fmt(v)}{unit}"
            parts.append(
                f'<circle class="pt" data-series="{escape(name)}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="{radius}" '
                f'fill="{color}"><title>{escape(tip)}</title></circle>'
            )
    parts.append("</svg>")
    return "".join(parts) + legend(list(cleaned))


def bar_chart(
    labels: Sequence[str],
    up: Sequence[float],
    down: Sequence[float],
    *,
    title: str,
    refreshed: Sequence[float] | None = None,
) -> str:
    """Adds above the axis, removes below it: one pair of ``rect.bar`` per run. ``refreshed`` (members
    re-sent before their membership expires: neither added nor removed) stacks on the adds in grey."""
    n = len(labels)
    fresh = [float(v or 0) for v in refreshed] if refreshed is not None else [0.0] * n
    head = f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
    if not n:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="muted">no data yet</text></svg>'
    top = max([*(float(a or 0) + f for a, f in zip(up, fresh, strict=True)), *down, 1])
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    mid = PAD_T + ih / 2
    bw = max(iw / n * 0.7, 0.6)
    parts = [head, f'<g class="axis"><line x1="{PAD_L}" y1="{mid}" x2="{W - PAD_R}" y2="{mid}"/>']
    parts.append(f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">+{_fmt(top)}</text>')
    parts.append(f'<text x="{PAD_L - 4}" y="{PAD_T + ih}" text-anchor="end">-{_fmt(top)}</text>')
    parts.append(f'<text x="{PAD_L}" y="{H - 6}">{escape(labels[0])}</text>')
    parts.append(f'<text x="{W - PAD_R}" y="{H - 6}" text-anchor="end">{escape(labels[-1])}</text></g>')
    for i in range(n):
        cx = PAD_L + iw * (i + 0.5) / n - bw / 2
        a, r, f = float(up[i] or 0), float(down[i] or 0), fresh[i]
        ha, hr, hf = a / top * ih / 2, r / top * ih / 2, f / top * ih / 2
        tip = escape(f"{labels[i]}: +{_fmt(a)} / -{_fmt(r)}" + (f" / {_fmt(f)} refreshed" if refreshed else ""))
        parts.append(
            f'<rect class="bar add" x="{cx:.1f}" y="{mid - ha:.1f}" width="{bw:.1f}" height="{ha:.1f}">'
            f"<title>{tip}</title></rect>"
        )
        if refreshed is not None:
            parts.append(
                f'<rect class="bar refresh" data-value="{_fmt(f)}" x="{cx:.1f}" y="{mid - ha - hf:.1f}" '
                f'width="{bw:.1f}" height="{hf:.1f}"><title>{tip}</title></rect>'
            )
        parts.append(
            f'<rect class="bar remove" x="{cx:.1f}" y="{mid:.1f}" width="{bw:.1f}" height="{hr:.1f}">'
            f"<title>{tip}</title></rect>"
        )
    parts.append("</svg>")
    if refreshed is not None:
        return "".join(parts) + legend(["adds", "refreshes", "removes"], colors=("#059669", "#9ca3af", "#dc2626"))
    return "".join(parts) + legend(["adds", "removes"], colors=("#059669", "#dc2626"))


def legend(names: Sequence[str], colors: Sequence[str] = PALETTE) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{colors[i % len(colors)]}"></i>{escape(n)}</span>'
        for i, n in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def sparkline(values: Sequence[float | None], *, width: int = 120, height: int = 24) -> str:
    """Size over the last runs in a table cell; a flat line when nothing changed."""
    vals = [v for v in _clean(values) if v is not None]
    if not vals:
        return '<span class="muted">–</span>'
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    n = len(vals)
    pts = " ".join(
        f"{(width - 2) * i / max(n - 1, 1) + 1:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
        for i, v in enumerate(vals)
    )
    tip = escape(f"{n} runs: {_fmt(vals[0])} → {_fmt(vals[-1])}")
    last = pts.rsplit(" ", 1)[-1].replace(",", '" cy="')
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" data-points="{n}">'
        f'<title>{tip}</title><polyline fill="none" stroke="#2563eb" stroke-width="1.2" points="{pts}"/>'
        f'<circle cx="{last}" r="1.8" fill="#2563eb"/></svg>'  # the latest run, visible even when it is the only one
    )
