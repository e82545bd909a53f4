"""Pareto view of results: throughput per GPU against interactivity (tokens/s per user).

Every (run, scenario, concurrency) row is a point; the frontier is the points no other point
beats on both axes. Written as a self-contained SVG so it opens anywhere, no plotting library.
"""

from __future__ import annotations

import math
from typing import Any, Optional
from xml.sax.saxutils import escape

X_KEY, Y_KEY = "intvty", "tput_per_gpu"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (higher-or-equal x and y, one strictly) by any other, by x ascending."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not best or y > best[-1][1]:
            best.append((x, y))
    return sorted(best)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2) if start + i * step <= hi + 1e-9]


def pareto_svg(series: list[tuple[str, list[dict[str, Any]]]], title: str = "") -> str:
    """series: (label, summary rows). Rows without both metrics, or invalid, are left out."""
    data = [(label, [(float(r[X_KEY]), float(r[Y_KEY]), r) for r in rows
                    if r.get(X_KEY) and r.get(Y_KEY) and r.get("valid") is not False]) for label, rows in series]
    pts = [(x, y) for _, ps in data for x, y, _ in ps]
    if not pts:
        raise ValueError("no row has both intvty and tput_per_gpu; nothing to plot")
    W, H, L, R, T, B = 760, 480, 80, 200, 40, 60
    # Interactivity spans a narrow band far from zero; throughput is read from zero.
    xs = [p[0] for p in pts]
    pad = (max(xs) - min(xs)) * 0.08 or max(xs) * 0.05
    xmin, xmax, ymax = max(0.0, min(xs) - pad), max(xs) + pad, max(p[1] for p in pts) * 1.08

    def sx(x: float) -> float:
        return L + (x - xmin) / (xmax - xmin) * (W - L - R)

    def sy(y: float) -> float:
        return H - B - y / ymax * (H - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="24" font-size="15" font-weight="bold">{escape(title or "throughput per GPU vs interactivity")}</text>']
    for t in [t for t in _ticks(xmin, xmax) if t >= xmin]:
        out.append(f'<line x1="{sx(t):.1f}" y1="{T}" x2="{sx(t):.1f}" y2="{H - B}" stroke="#eee"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(0, ymax):
        out.append(f'<line x1="{L}" y1="{sy(t):.1f}" x2="{W - R}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 18}" text-anchor="middle">interactivity (tok/s/user)</text>')
    out.append(f'<text transform="translate(20,{(T + H - B) / 2}) rotate(-90)" text-anchor="middle">throughput (tok/s/GPU, all GPUs)</text>')
    front = frontier(pts)
    if len(front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        out.append(f'<polyline class="frontier" points="{path}" fill="none" stroke="#333" stroke-dasharray="5,3"/>')
    for i, (label, ps) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        for x, y, r in ps:
            tip = f"{label}: conc {r.get('concurrency')}, ISL {r.get('isl')}/OSL {r.get('osl')}" + point_detail(r)
            on = (x, y) in front
            out.append(f'<circle class="point{" on-frontier" if on else ""}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{5 if on else 4}" '
                       f'fill="{color}" stroke="{"black" if on else "none"}"><title>{escape(tip)}</title></circle>')
            out.append(f'<text x="{sx(x) + 6:.1f}" y="{sy(y) - 6:.1f}" font-size="10" fill="{color}">c{r.get("concurrency")}</text>')
        ly = T + 14 + 18 * i
        out.append(f'<circle cx="{W - R + 16}" cy="{ly - 4}" r="5" fill="{color}"/>')
        out.append(f'<text x="{W - R + 26}" y="{ly}">{escape(label)}</text>')
    out.append(f'<text x="{W - R + 16}" y="{T + 14 + 18 * len(data) + 6}" font-size="10">dashed: Pareto frontier</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# What a point's tooltip adds to its two coordinates, when the row has it.
DETAIL = [("median_ttft_ms", "TTFT p50 {:.1f} ms"), ("p99_ttft_ms", "p99 {:.1f} ms"), ("median_tpot_ms", "TPOT p50 {:.2f} ms"),
          ("p99_tpot_ms", "p99 {:.2f} ms"), ("median_e2el_ms", "E2EL p50 {:.0f} ms"), ("p99_e2el_ms", "p99 {:.0f} ms"),
          ("joules_per_output_token", "{:.4g} J/output token")]


def point_detail(row: dict[str, Any]) -> str:
    parts = [fmt.format(float(row[k])) for k, fmt in DETAIL if isinstance(row.get(k), (int, float))]
    return "; " + ", ".join(parts) if parts else ""


def series_label(summary: dict[str, Any], fallback: Optional[str] = None) -> str:
    return f"{summary.get('topology') or ''} {summary.get('name') or fallback or ''}".strip()
