"""A scatter plot as inline SVG: drawn in the notebook with no plotting library and no network."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def scatter_svg(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    *,
    xlabel: str = "",
    ylabel: str = "",
    width: int = 460,
    height: int = 320,
) -> str:
    """An SVG scatter of (x, y) with one tooltip per point; non-finite points are left out."""
    pts = [
        (float(a), float(b), str(lab))
        for a, b, lab in zip(x, y, labels, strict=True)
        if math.isfinite(float(a)) and math.isfinite(float(b))
    ]
    left, right, top, bottom = 64, 12, 12, 44
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg class="vh-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-size="11" '
        'font-family="sans-serif">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    if not pts:
        parts.append(f'<text x="{left + 8}" y="{top + 20}">no finite values to plot</text></svg>')
        return "".join(parts)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    padx = (x1 - x0) * 0.05 or abs(x0) * 0.05 or 1.0
    pady = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    for tx in _ticks(x0, x1):
        parts.append(
            f'<line x1="{sx(tx):.1f}" x2="{sx(tx):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
            f'stroke="#666"/><text x="{sx(tx):.1f}" y="{top + ph + 16}" '
            f'text-anchor="middle">{tx:.4g}</text>'
        )
    for ty in _ticks(y0, y1):
        parts.append(
            f'<line x1="{left - 4}" x2="{left}" y1="{sy(ty):.1f}" y2="{sy(ty):.1f}" '
            f'stroke="#666"/><text x="{left - 6}" y="{sy(ty) + 4:.1f}" '
            f'text-anchor="end">{ty:.4g}</text>'
        )
    for a, b, lab in pts:
        parts.append(
            f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="5" fill="#1976d2" '
            f'fill-opacity="0.75"><title>{html.escape(lab)}: ({a:.5g}, {b:.5g})</title></circle>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">'
        f"{html.escape(xlabel)}</text>"
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(ylabel)}</text></svg>"
    )
    return "".join(parts)
