"""A report as one self-contained HTML page: inline CSS, charts drawn as inline SVG, images as PNG data URIs.

The page needs nothing from the network and no JavaScript, so it can be archived, mailed or attached to a CI run.
Everything taken from the report (node names, file names, messages) is user-controlled and is escaped once, where
it is written into the page (:func:`_e`); a section whose data is malformed is replaced by a note, never a crash.

Sections: the model summary; per-layer Lipschitz bounds on a log scale (lower and upper per layer, Szegedy et al.
2013, "Intriguing properties of neural networks", Table 5, drawn); per norm the "sandwich" of certified accuracy
(a guaranteed lower bound on robust accuracy) and attacked accuracy (an upper bound), shaded between them; the
smallest perturbations found; adversarial examples for image inputs; the policy verdict; how to verify the report.
"""

from __future__ import annotations

import base64
import html
import math
import shlex
import struct
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from certify.report.render import fmt, local_layer_table, method_table, property_table
from certify.report.schema import fields

PAGE_CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --upper: #2f5597; --lower: #e0902f;
        --cert: #2e8540; --attack: #c0392b; --band: #9fd3a9; --pass: #2e8540; --fail: #c0392b; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0;
       background: #f5f6f8; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 6px; word-break: break-all; }
h2 { font-size: 19px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px; margin: 16px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f0f2f5; padding: 10px 12px; border-radius: 6px; overflow-x: auto; white-space: pre-wrap;
      word-break: break-all; }
.muted { color: var(--muted); }
.banner { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin: 10px 0; }
.banner.ok { background: #e3f4e7; color: #1d5c2b; }
.banner.warn { background: #fff4dd; color: #7a5200; }
.verdict { display: inline-block; padding: 6px 16px; border-radius: 6px; font-weight: 700; font-size: 20px;
           color: #fff; }
.verdict.pass { background: var(--pass); } .verdict.fail { background: var(--fail); }
.verdict.none { background: var(--muted); }
.tag-pass { color: var(--pass); font-weight: 700; } .tag-fail { color: var(--fail); font-weight: 700; }
.skipped { color: var(--muted); font-style: italic; }
.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 14px; }
.kv dt { color: var(--muted); } .kv dd { margin: 0; word-break: break-all; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--ink); }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; }
.example { border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.example .imgs { display: flex; gap: 6px; }
.example figure { margin: 0; text-align: center; font-size: 11px; color: var(--muted); }
.example img { width: 88px; height: 88px; image-rendering: pixelated; border: 1px solid var(--line);
               background: #fff; }
.example p { margin: 6px 0 0; font-size: 13px; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""

COLORS = {"upper": "#2f5597", "lower": "#e0902f", "cert": "#2e8540", "attack": "#c0392b", "band": "#9fd3a9",
          "grid": "#e6e9ef", "axis": "#8a93a3", "clean": "#5b6475", "hist": "#6c7fb3"}

MAX_EXAMPLES = 12
MAX_IMAGE_SIDE = 256
MAX_HISTOGRAM_BINS = 60


def _e(value) -> str:
    """Escape anything for HTML text and quoted attributes."""
    return html.escape(value if isinstance(value, str) else fmt(value), quote=True)


def _num(value) -> float | None:
    """A finite float, or None (booleans and non-numbers are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _skipped(section) -> str | None:
    if isinstance(section, dict) and section.get("status") == "skipped":
        return str(section.get("reason") or "no reason given")
    return None


def _pct(value) -> str:
    v = _num(value)
    return "-" if v is None else f"{100 * v:.1f}%"


# ------------------------------------------------------------------------------------------------------ SVG drawing
class Axis:
    """Maps data values to pixels along one direction, on a linear or a base-10 log scale."""

    def __init__(self, lo: float, hi: float, start: float, end: float, log: bool = False):
        if log and lo <= 0:
            raise ValueError("a log axis needs a positive lower end")
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        v = min(max(v, self.lo), self.hi)
        return self.start + (v - self.lo) / (self.hi - self.lo) * (self.end - self.start)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:.6g}"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>{"".join(body)}</svg>')


def _text(x: float, y: float, content: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{_e(content)}</text>'


def _marker_label(x: float, y: float, content: str, x_max: float) -> str:
    """A label beside a vertical marker: to its right, or to its left near the right edge of the plot."""
    if x + 7 * len(content) > x_max:
        return _text(x - 4, y, content, "end")
    return _text(x + 4, y, content)


def _line(x1, y1, x2, y2, color: str, width: float = 1.0, dash: str | None = None) -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="{width}"{dashes}/>')


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _legend(x: float, y: float, items: list[tuple[str, str]]) -> list[str]:
    out = []
    for label, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="12" height="10" fill="{color}"/>')
        out.append(_text(x + 16, y, label))
        x += 24 + 6.2 * len(label)
    return out


def _x_axis(axis: Axis, ticks: list[float], y: float, top: float, label: str) -> list[str]:
    out = [_line(axis.start, y, axis.end, y, COLORS["axis"])]
    for t in ticks:
        x = axis(t)
        out.append(_line(x, top, x, y, COLORS["grid"]))
        out.append(_text(x, y + 14, _tick_label(t), "middle"))
    out.append(_text((axis.start + axis.end) / 2, y + 30, label, "middle"))
    return out


def bar_chart_log(rows: list[dict], title: str) -> str:
    """Horizontal grouped bars on a log axis: per row an ``upper`` and a ``lower`` value (None: not drawn).

    ``rows``: {"label", "detail", "upper", "lower"}; values must be positive to appear on a log scale.
    """
    values = [v for r in rows for v in (r.get("upper"), r.get("lower")) if v is not None and v > 0]
    if not values:
        raise ValueError("no positive bound to draw")
    # Half a decade of room below the smallest value, so that a bound of exactly 1 still shows as a bar.
    lo = 10 ** math.floor(math.log10(min(values) / 3))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    left, right, top, row_h = 190, 30, 30, 28
    width = 860
    height = top + row_h * len(rows) + 44
    axis = Axis(lo, hi, left, width - right, log=True)
    first, last = round(math.log10(lo)), round(math.log10(hi))
    stride = max(1, math.ceil((last - first) / 10))  # at most about ten labelled decades
    ticks = [10.0 ** k for k in range(first, last + 1, stride)]
    bottom = top + row_h * len(rows)
    body = _legend(left, 16, [("upper bound (guaranteed)", COLORS["upper"]),
                              ("lower bound (certified or estimate)", COLORS["lower"])])
    body += _x_axis(axis, ticks, bottom, top, "Lipschitz constant (log scale)")
    for i, row in enumerate(rows):
        y = top + i * row_h
        label = row["label"] if len(row["label"]) <= 28 else row["label"][:27] + "\u2026"
        body.append(f'<g class="layer"><title>{_e(row["detail"])}</title>')
        body.append(_text(left - 8, y + 17, label, "end"))
        for offset, key in ((4, "upper"), (15, "lower")):
            value = row.get(key)
            if value is not None and value > 0:
                w = max(axis(value) - left, 1.0)
                body.append(f'<rect class="bar-{key}" x="{left}" y="{y + offset}" width="{w:.1f}" height="9" '
                            f'fill="{COLORS[key]}"/>')
                body.append(_text(left + w + 4, y + offset + 8, fmt(value)))
            elif key == "upper":
                body.append(_text(left + 4, y + offset + 8, "no guaranteed bound", extra=' fill="#c0392b"'))
        body.append("</g>")
    return _svg(width, height, body, title)


def upper_steps(points: list[tuple[float, float]], start: float, x_end: float) -> list[tuple[float, float]]:
    """The tightest upper bound a non-increasing function can have, given upper bounds at ``points``.

    From eps on, the function is below every bound measured at or before eps, and below ``start`` (its value at 0).
    """
    level, out = start, [(0.0, start)]
    for x, y in sorted(points):
        if y < level:
            out += [(x, level), (x, y)]
            level = y
    return out + [(x_end, level)]


def lower_steps(points: list[tuple[float, float]], x_end: float) -> list[tuple[float, float]]:
    """The tightest lower bound a non-increasing function can have, given lower bounds at ``points``.

    Up to eps, the function is above every bound measured at or after eps; beyond the last point nothing is known.
    """
    pts = sorted(points)
    out = []
    for i, (x, _) in enumerate(pts):
        level = max(y for _, y in pts[i:])
        start = 0.0 if i == 0 else pts[i - 1][0]
        out += [(start, level), (x, level)]
    last = pts[-1][0] if pts else 0.0
    return out + [(last, 0.0), (x_end, 0.0)]


def sandwich_chart(certified: list[tuple[float, float]], attacked: list[tuple[float, float]], clean: float | None,
                   title: str) -> str:
    """Accuracy against eps: certified (lower bound) and attacked (upper bound), the band between them shaded."""
    xs = [x for x, _ in certified + attacked]
    if not xs:
        raise ValueError("no accuracy to draw")
    x_end = max(xs) * 1.08 if max(xs) > 0 else 1.0
    left, right, top, bottom_pad = 56, 24, 34, 44
    width, height = 860, 320
    bottom = height - bottom_pad
    xa, ya = Axis(0.0, x_end, left, width - right), Axis(0.0, 1.0, bottom, top)
    start = clean if clean is not None else 1.0
    upper = upper_steps(attacked, start, x_end)
    lower = lower_steps(certified + ([(0.0, clean)] if clean is not None else []), x_end)
    body = _legend(left, 16, [("certified accuracy (guaranteed lower bound)", COLORS["cert"]),
                              ("attacked accuracy (upper bound)", COLORS["attack"]),
                              ("true robust accuracy lies here", COLORS["band"])])
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = ya(t)
        body.append(_line(left, y, width - right, y, COLORS["grid"]))
        body.append(_text(left - 6, y + 4, f"{round(100 * t)}%", "end"))
    body += _x_axis(xa, nice_ticks(0.0, x_end), bottom, top, "perturbation radius eps")
    band = [(xa(x), ya(y)) for x, y in upper] + [(xa(x), ya(y)) for x, y in reversed(lower)]
    body.append(f'<polygon class="band" points="{_points(band)}" fill="{COLORS["band"]}" fill-opacity="0.55" '
                f'stroke="none"/>')
    if clean is not None:
        body.append(_line(left, ya(clean), width - right, ya(clean), COLORS["clean"], 1, "4 3"))
        body.append(_text(width - right, ya(clean) - 4, f"clean accuracy {_pct(clean)}", "end"))
    for steps, points, color, css in ((lower, certified, COLORS["cert"], "certified"),
                                      (upper, attacked, COLORS["attack"], "attacked")):
        if not points:
            continue
        body.append(f'<polyline class="curve-{css}" points="{_points([(xa(x), ya(y)) for x, y in steps])}" '
                    f'fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in points:
            body.append(f'<circle class="point-{css}" cx="{xa(x):.1f}" cy="{ya(y):.1f}" r="4" fill="{color}">'
                        f'<title>{_e(f"{css} accuracy {_pct(y)} at eps {fmt(x)}")}</title></circle>')
    return _svg(width, height, body, title)


def histogram_chart(edges: list[float], counts: list[int], markers: dict[str, float], title: str) -> str:
    """Counts per bin [edges[i], edges[i+1]); ``markers`` are labelled vertical lines (median, mean, ...)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError("a histogram needs len(edges) == len(counts) + 1 > 1")
    left, right, top, bottom_pad = 56, 24, 20, 44
    width, height = 860, 260
    bottom = height - bottom_pad
    peak = max(max(counts), 1)
    xa, ya = Axis(edges[0], edges[-1], left, width - right), Axis(0.0, peak * 1.1, bottom, top)
    body = []
    for t in nice_ticks(0.0, peak, 4):
        body.append(_line(left, ya(t), width - right, ya(t), COLORS["grid"]))
        body.append(_text(left - 6, ya(t) + 4, _tick_label(t), "end"))
    body += _x_axis(xa, nice_ticks(edges[0], edges[-1]), bottom, top, "smallest adversarial perturbation found")
    for lo, hi, n in zip(edges, edges[1:], counts):
        x0, x1 = xa(lo), xa(hi)
        tip = _e(f"{n} in [{fmt(lo)}, {fmt(hi)})")
        body.append(f'<rect class="bin" x="{x0:.1f}" y="{ya(n):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                    f'height="{bottom - ya(n):.1f}" fill="{COLORS["hist"]}"><title>{tip}</title></rect>')
    for i, (name, value) in enumerate(markers.items()):
        x = xa(value)
        body.append(_line(x, top, x, bottom, COLORS["attack"], 1.5, "5 3"))
        body.append(_marker_label(x, top + 12 + 13 * i, f"{name} {fmt(value)}", width - right))
    return _svg(width, height, body, title)


def range_chart(stats: dict, title: str) -> str:
    """Without per-sample distances: a box plot from the summary statistics.

    The whiskers span min..max, the box the 25th..75th percentiles and the thin ticks the 5th and 95th, when the
    report has them; the median and the mean are marked.
    """
    lo, hi = _num(stats.get("min")), _num(stats.get("max"))
    if lo is None or hi is None:
        raise ValueError("no min/max to draw")
    top_value = hi if hi > lo else lo + 1.0
    width, height, left, right = 860, 110, 56, 24
    xa = Axis(lo, top_value, left, width - right)
    body = _x_axis(xa, nice_ticks(lo, top_value), 70, 14, "smallest adversarial perturbation found")
    mid = 40
    body.append(f'<line class="range" x1="{xa(lo):.1f}" y1="{mid}" x2="{xa(hi):.1f}" y2="{mid}" '
                f'stroke="{COLORS["hist"]}" stroke-width="2"/>')
    for v in (lo, hi):
        body.append(_line(xa(v), mid - 8, xa(v), mid + 8, COLORS["hist"], 2))
    percentiles = stats.get("percentiles")
    q = {k: _num(v) for k, v in percentiles.items()} if isinstance(percentiles, dict) else {}
    q25, q75 = q.get("25"), q.get("75")
    if q25 is not None and q75 is not None:
        tip = _e(f"25th to 75th percentile: {fmt(q25)} to {fmt(q75)}")
        body.append(f'<rect class="quartiles" x="{xa(q25):.1f}" y="{mid - 10}" width="{max(xa(q75) - xa(q25), 2):.1f}" '
                    f'height="20" fill="{COLORS["hist"]}" fill-opacity="0.6"><title>{tip}</title></rect>')
    for key in ("5", "95"):
        if q.get(key) is not None:
            body.append(_line(xa(q[key]), mid - 5, xa(q[key]), mid + 5, COLORS["hist"], 1.5))
    for i, name in enumerate(("median", "mean")):
        v = _num(stats.get(name))
        if v is not None:
            body.append(_line(xa(v), mid - 12, xa(v), mid + 12, COLORS["attack"], 2, None if i == 0 else "3 2"))
            body.append(_marker_label(xa(v), 10 + 14 * i, f"{name} {fmt(v)}", width - right))
    return _svg(width, height, body, title)


# ------------------------------------------------------------------------------------------------------ PNG images
def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of ``pixels`` (uint8; H x W grey or H x W x 3 RGB), written with zlib (PNG spec, ISO/IEC 15948)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError("expected uint8 pixels of shape (H, W) or (H, W, 3)")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def image_layout(shape: Sequence) -> tuple[int, int, int, bool] | None:
    """(height, width, channels, channels_first) when a sample of ``shape`` (no batch axis) is an image, else None.

    Accepted: (H, W), (C, H, W) and (H, W, C) with C = 1 or 3 (leading axes of size 1 dropped), and flat vectors of
    a square length >= 16, shown as a square grey image (e.g. the 8x8 digits). Channels-first wins when both fit.
    """
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        return None
    dims = [int(d) for d in shape]
    while len(dims) > 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 1:
        side = math.isqrt(max(dims[0], 0))
        layout = (side, side, 1, False) if side * side == dims[0] and side >= 4 else None
    elif len(dims) == 2:
        layout = (dims[0], dims[1], 1, False)
    elif len(dims) == 3 and dims[0] in (1, 3):
        layout = (dims[1], dims[2], dims[0], True)
    elif len(dims) == 3 and dims[2] in (1, 3):
        layout = (dims[0], dims[1], dims[2], False)
    else:
        layout = None
    if layout is None or not (2 <= layout[0] <= MAX_IMAGE_SIDE and 2 <= layout[1] <= MAX_IMAGE_SIDE):
        return None
    return layout


def to_hwc(values, shape: Sequence) -> np.ndarray:
    """A sample as an (H, W, C) float array (C = 1 or 3); ValueError when it is not an image."""
    layout = image_layout(shape)
    if layout is None:
        raise ValueError(f"shape {list(shape)} is not an image")
    h, w, c, channels_first = layout
    a = np.asarray(values, dtype=np.float64)
    if a.size != h * w * c:
        raise ValueError(f"{a.size} values do not fill shape {list(shape)}")
    return a.reshape(c, h, w).transpose(1, 2, 0) if channels_first else a.reshape(h, w, c)


def to_pixels(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values in [lo, hi] -> uint8 grey (H, W) or RGB (H, W, 3)."""
    scaled = np.clip((np.nan_to_num(image) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8)
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def amplified_difference(diff: np.ndarray) -> tuple[np.ndarray, float]:
    """The difference scaled so its largest magnitude spans the grey range around mid-grey; returns the gain."""
    peak = float(np.max(np.abs(np.nan_to_num(diff)))) if diff.size else 0.0
    gain = 0.5 / peak if peak > 0 else 1.0
    return to_pixels(0.5 + gain * diff, 0.0, 1.0), gain


# ------------------------------------------------------------------------------------------------------ sections
def _section(title: str, anchor: str, body: Callable[[], str]) -> str:
    """A page section; a section whose data cannot be drawn says so instead of breaking the page."""
    try:
        content = body()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as e:
        content = f'<p class="skipped">This section could not be drawn: {_e(type(e).__name__)}: {_e(str(e))}</p>'
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{content}</section>'


def _skipped_note(reason: str) -> str:
    return f'<p class="skipped">Skipped: {_e(reason)}</p>'


def _cell_class(column: int, value, numeric: Sequence[int], verdicts: bool) -> str:
    if verdicts and column == 0 and value in ("PASS", "FAIL"):
        return f' class="tag-{value.lower()}"'
    return ' class="num"' if column in numeric else ""


def _table(headers: list[str], rows: list[list], numeric: Sequence[int] = (), verdicts: bool = False) -> str:
    """A table; ``numeric`` columns are right-aligned; with ``verdicts`` a first-column PASS/FAIL is coloured."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{_cell_class(i, c, numeric, verdicts)}>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: list[tuple[str, object]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _tensors(items) -> str:
    return ", ".join(f"{t.get('name')} {t.get('dtype')}[{fmt(t.get('shape'))}]" for t in items or []) or "none"


def _model_section(p: dict) -> str:
    m = p.get("model") or {}
    ops = ", ".join(f"{k} \u00d7{v}" for k, v in sorted((m.get("operators") or {}).items()))
    unsupported = ", ".join(f"{k} \u00d7{v}" for k, v in (m.get("unsupported_operators") or {}).items()) or "none"
    params = m.get("parameters")
    pairs = [("opset", m.get("opset")), ("nodes", m.get("nodes")),
             ("parameters", f"{params:,}" if isinstance(params, int) else params),
             ("inputs", _tensors(m.get("inputs"))), ("outputs", _tensors(m.get("outputs"))),
             ("operators", ops or "none"), ("unsupported operators", unsupported)]
    ds = p.get("dataset")
    pairs.append(("dataset", f"{ds.get('name') or 'unnamed'}: {ds.get('samples')} samples, sha256 "
                             f"{ds.get('sha256')}" if isinstance(ds, dict) else "none"))
    conv = p.get("conversion")
    pairs.append(("conversion check", f"skipped: {_skipped(conv)}" if _skipped(conv) else
                  f"max |diff| {fmt(conv.get('max_abs_diff'))}, max relative diff {fmt(conv.get('max_rel_diff'))} "
                  "against onnxruntime"))
    conv = p.get("converter")
    pairs.append(("converter", f"skipped: {_skipped(conv)}" if _skipped(conv) else
                  f"{conv.get('version')}, weights sha256 {conv.get('weights_sha256')}"))
    return _kv(pairs)


def _bounds_section(p: dict) -> str:
    b = p.get("bounds")
    if _skipped(b):
        return _skipped_note(_skipped(b))
    layers = [row for row in b.get("layers") or [] if isinstance(row, dict)]
    rows = []
    for row in layers:
        label = f"{row.get('node')} ({row.get('op')})"
        detail = (f"{label}: upper {fmt(row.get('upper'))}, lower {fmt(row.get('lower'))}, "
                  f"method {fmt(row.get('method'))}" + (f"; {row['reason']}" if row.get("reason") else ""))
        rows.append({"label": label, "detail": detail, "upper": _num(row.get("upper")),
                     "lower": _num(row.get("lower"))})
    n = b.get("network") or {}
    rows.append({"label": "whole network", "detail": f"network: upper {fmt(n.get('upper'))} (guaranteed), "
                 f"product of layers {fmt(n.get('product'))}, lower {fmt(n.get('lower'))}",
                 "upper": _num(n.get("upper")), "lower": _num(n.get("lower"))})
    norm = f" ({b['norm']})" if b.get("norm") else ""
    parts = [f'<p class="muted">Per layer, how much it can stretch a perturbation in the {_e(b.get("norm") or "")} '
             "norm: the upper bound is guaranteed (also in floating point); the lower bound is certified or an "
             "estimate, as the method column says. The gap between them is how much the bound could be "
             "loose.</p>"]
    parts.append(bar_chart_log(rows, f"Lipschitz bounds per layer{norm}, log scale"))
    keys = [k for k in fields("layer") if k not in ("shape", "ms")]  # the chart above shows the sizes
    parts.append(_table(keys, [[row.get(k) for k in keys] for row in layers],
                        numeric=tuple(keys.index(k) for k in ("lower", "upper", "ratio"))))
    parts.append(_kv([("network upper bound (guaranteed)", n.get("upper")),
                      ("product of the layer bounds", n.get("product")), ("network lower bound", n.get("lower")),
                      ("method", n.get("method"))] + ([("note", n["reason"])] if n.get("reason") else [])))
    headers, rows = local_layer_table(p)
    if rows:
        parts.append('<h3>Local layerwise bounds</h3><p class="muted">Within the eps-balls around the samples part '
                     "of each activation pattern is fixed, so each layer stretches perturbations less than its "
                     "global bound allows (guaranteed upper bounds, mean and max over the samples).</p>")
        parts.append(_table(headers, rows, numeric=(1, 4, 5, 6)))
    return "".join(parts)


def _eps_points(by_eps) -> list[tuple[float, float]]:
    points = []
    for eps, value in (by_eps or {}).items():
        acc = _num(value.get("robust_accuracy") if isinstance(value, dict) else value)
        try:
            x = float(eps)
        except (TypeError, ValueError):
            continue
        if acc is not None and math.isfinite(x) and x >= 0:
            points.append((x, acc))
    return sorted(points)


def _accuracy_section(p: dict) -> str:
    cert, attacks = p.get("certified"), p.get("attacks")
    cert_ok = isinstance(cert, dict) and not _skipped(cert)
    attacks_ok = isinstance(attacks, dict) and not _skipped(attacks)
    notes = []
    if _skipped(cert):
        notes.append(f"certified accuracy skipped: {_skipped(cert)}")
    if _skipped(attacks):
        notes.append(f"attacks skipped: {_skipped(attacks)}")
    parts = [f'<p class="skipped">{_e(n)}</p>' for n in notes]
    cert_acc = (cert.get("accuracy") or {}) if cert_ok else {}
    attack_results = (attacks.get("results") or {}) if attacks_ok else {}
    norms = list(dict.fromkeys([*cert_acc, *attack_results]))
    if not norms:
        return "".join(parts) or _skipped_note("no accuracies in this report")
    clean = _num(cert.get("clean_accuracy")) if cert_ok else None
    if clean is None and attacks_ok:
        clean = _num(attacks.get("clean_accuracy"))
    parts.append('<p class="muted">The true robust accuracy at each radius lies between the certified accuracy '
                 "(no perturbation of that size can change these predictions) and the attacked accuracy (the "
                 "attacks found no perturbation for these). Between measured radii the band follows from robust "
                 "accuracy never increasing with the radius.</p>")
    for norm in norms:
        certified = _eps_points(cert_acc.get(norm))
        attacked = _eps_points(attack_results.get(norm))
        parts.append(f"<h3>{_e(norm)}</h3>")
        parts.append(sandwich_chart(certified, attacked, clean, f"Certified and attacked accuracy, {norm}"))
        rows = [[fmt(x), _pct(dict(certified).get(x)), _pct(dict(attacked).get(x))]
                for x in sorted({x for x, _ in certified + attacked})]
        parts.append(_table(["eps", "certified accuracy", "attacked accuracy"], rows, numeric=(0, 1, 2)))
    headers, rows = method_table(p)
    if cert_ok and rows:
        parts.append('<h3>Certified accuracy per method</h3><p class="muted">Each sound method on its own, the best '
                     "per sample (a sample counts when any method certified it) and the attacked accuracy.</p>")
        parts.append(_table(headers, [[r[0], r[1], *(_pct(v) for v in r[2:])] for r in rows],
                            numeric=tuple(range(1, len(headers)))))
        for norm, local in (cert.get("local") or {}).items():
            if local.get("skipped"):
                parts.append(f'<p class="skipped">local certification skipped ({_e(norm)}): '
                             f"{_e(local['skipped'])}</p>")
    return "".join(parts)


def _histogram_from(stats: dict) -> tuple[list[float], list[int]] | None:
    hist = stats.get("histogram")
    if isinstance(hist, dict):
        edges = [_num(v) for v in hist.get("edges") or []]
        counts = hist.get("counts") or []
        if None not in edges and all(isinstance(c, int) and c >= 0 for c in counts) and len(edges) == len(counts) + 1:
            return edges, counts
    distances = [d for d in (_num(v) for v in stats.get("distances") or []) if d is not None]
    if distances:
        bins = min(MAX_HISTOGRAM_BINS, max(5, math.ceil(math.sqrt(len(distances)))))
        counts, edges = np.histogram(np.asarray(distances), bins=bins)
        return [float(e) for e in edges], [int(c) for c in counts]
    return None


def _perturbation_section(p: dict) -> str:
    a = p.get("attacks")
    if _skipped(a):
        return _skipped_note(_skipped(a))
    minimal = (a.get("minimal_perturbation") or {}) if isinstance(a, dict) else {}
    if not minimal:
        return _skipped_note("no minimal-perturbation attack was run")
    parts = ['<p class="muted">For each correctly classified sample, the smallest adversarial perturbation the '
             "attacks found: an upper bound on that sample's true distance to the decision boundary.</p>"]
    for norm, stats in minimal.items():
        if not isinstance(stats, dict):
            continue
        parts.append(f"<h3>{_e(norm)}, {_e(stats.get('attack') or 'attack')}: {_e(stats.get('count'))} samples</h3>")
        if not stats.get("count") and _num(stats.get("max")) is None:
            parts.append('<p class="muted">No sample was broken: the attacks found no adversarial perturbation '
                         "within the radii tried, so there is no distance to draw.</p>")
            continue
        markers = {k: v for k in ("median", "mean") if (v := _num(stats.get(k))) is not None}
        hist = _histogram_from(stats)
        if hist:
            parts.append(histogram_chart(hist[0], hist[1], markers, f"Minimal perturbations, {norm}"))
        else:
            parts.append(range_chart(stats, f"Minimal perturbations, {norm}: range"))
            parts.append('<p class="muted">The report carries summary statistics only (no per-sample '
                         "distances), so a box plot is drawn instead of a histogram: the whiskers span the smallest "
                         "and largest, the box the middle half.</p>")
        parts.append(_table(["count", "min", "median", "mean", "max"],
                            [[stats.get(k) for k in ("count", "min", "median", "mean", "max")]], range(5)))
    return "".join(parts)


def _examples_of(attacks: dict) -> list[tuple[str | None, dict]]:
    """Examples as a list, or per norm ({norm: [...]}); returned as (norm, example) pairs."""
    raw = attacks.get("examples")
    if isinstance(raw, dict):
        pairs = [(norm, ex) for norm, items in raw.items() for ex in (items or [])]
    else:
        pairs = [(None, ex) for ex in raw or []]
    return [(norm, ex) for norm, ex in pairs if isinstance(ex, dict)][:MAX_EXAMPLES]


def _input_range(p: dict) -> tuple[float, float]:
    for source in ((p.get("config") or {}).get("input_range"), (p.get("conversion") or {}).get("input_range")):
        if isinstance(source, (list, tuple)) and len(source) == 2:
            lo, hi = _num(source[0]), _num(source[1])
            if lo is not None and hi is not None and hi > lo:
                return lo, hi
    return 0.0, 1.0


def _example_card(norm: str | None, ex: dict, lo: float, hi: float) -> str:
    shape = ex.get("shape") or []
    original = to_hwc(ex["original"], shape)
    perturbed = to_hwc(ex["perturbed"], shape)
    diff = to_hwc(ex["difference"], shape) if ex.get("difference") is not None else perturbed - original
    amplified, gain = amplified_difference(diff)
    figures = [("original", to_pixels(original, lo, hi)), ("perturbed", to_pixels(perturbed, lo, hi)),
               (f"difference \u00d7{gain:.3g}", amplified)]
    imgs = "".join(f'<figure><img alt="{_e(caption)}" src="{_data_uri(px)}"><figcaption>{_e(caption)}'
                   "</figcaption></figure>" for caption, px in figures)
    where = ", ".join(str(s) for s in (norm, ex.get("attack"), f"eps {fmt(ex.get('eps'))}",
                                       f"distance {fmt(ex.get('distance'))}") if s)
    label = (f"sample {fmt(ex.get('index'))}: label {fmt(ex.get('label'))}, predicted "
             f"{fmt(ex.get('clean_prediction'))} \u2192 {fmt(ex.get('adversarial_prediction'))} after the attack")
    return (f'<div class="example"><div class="imgs">{imgs}</div><p>{_e(label)}</p>'
            f'<p class="muted">{_e(where)}</p></div>')


def _examples_section(p: dict) -> str:
    a = p.get("attacks")
    if _skipped(a):
        return _skipped_note(_skipped(a))
    examples = _examples_of(a) if isinstance(a, dict) else []
    if not examples:
        return _skipped_note("the report carries no adversarial examples")
    if image_layout(examples[0][1].get("shape") or []) is None:
        rows = [[ex.get("index"), ex.get("label"), ex.get("clean_prediction"), ex.get("adversarial_prediction"),
                 norm, ex.get("attack"), ex.get("eps"), ex.get("distance")] for norm, ex in examples]
        return ('<p class="muted">The inputs are not images; the examples are listed.</p>'
                + _table(["sample", "label", "prediction", "adversarial prediction", "norm", "attack", "eps",
                          "distance"], rows))
    lo, hi = _input_range(p)
    cards = []
    for norm, ex in examples:
        try:
            cards.append(_example_card(norm, ex, lo, hi))
        except (TypeError, ValueError, KeyError) as e:
            cards.append(f'<div class="example skipped">example not drawn: {_e(str(e))}</div>')
    return ('<p class="muted">Original, perturbed, and their difference amplified to the full grey range '
            "(mid-grey is no change).</p>" + f'<div class="examples">{"".join(cards)}</div>')


def _policy_section(p: dict) -> str:
    result = p.get("policy")
    if not isinstance(result, dict):
        return ('<p><span class="verdict none">NO POLICY</span></p><p class="muted">No policy was evaluated when '
                "this report was made. A deployment gate evaluates one against the verified report: "
                "<code>lipcert gate report.json --key KEY.pub.pem --model MODEL --policy policy.yaml</code>.</p>")
    verdict = str(result.get("verdict", "")).lower()
    css = verdict if verdict in ("pass", "fail") else "none"
    from certify.report.policy import check_cells

    rows = [[c.get("verdict", "").upper(), c.get("name"), *check_cells(c), c.get("detail")]
            for c in result.get("checks") or [] if isinstance(c, dict)]
    table = _table(["verdict", "check", "value", "threshold", "detail"], rows, verdicts=True)
    when = f'<p class="muted">evaluated {_e(result["evaluated_at"])}</p>' if result.get("evaluated_at") else ""
    return f'<p><span class="verdict {css}">{_e(verdict.upper() or "UNKNOWN")}</span></p>{when}{table}'


def _checks_section(p: dict) -> str:
    a = p.get("attacks")
    parts = []
    if isinstance(a, dict) and not _skipped(a):
        checks = [c for c in a.get("sanity_checks") or [] if isinstance(c, dict)]
        rows = [["PASS" if c.get("passed") else "FAIL", c.get("name"), c.get("detail")] for c in checks]
        if rows:
            parts.append("<h3>Attack sanity checks</h3>" + _table(["result", "check", "detail"], rows, verdicts=True))
        parts += [f'<p class="banner warn">warning: {_e(w)}</p>' for w in a.get("warnings") or []]
    stages = [s for s in p.get("stages") or [] if isinstance(s, dict)]
    keys = fields("stage")
    parts.append("<h3>Stages</h3>" + _table(keys, [[s.get(k) for k in keys] for s in stages],
                                            numeric=(keys.index("seconds"),)))
    env = p.get("environment") or {}
    parts.append("<h3>Environment</h3>" + _kv(list(env.items())))
    return "".join(parts)


def _verify_section(subject: dict, keyids: list[str], verified_keyid: str | None, report_name: str,
                    signed: bool) -> str:
    if not signed:
        return ('<p class="banner warn">This is an unsigned statement: there is no signature to verify. Ask the '
                "service for the signed report (GET /v1/jobs/&lt;id&gt;/report).</p>")
    model = subject.get("name") or "MODEL.onnx"
    digest = (subject.get("digest") or {}).get("sha256")
    command = f"lipcert verify {shlex.quote(report_name)} --key lipcert.pub.pem --model {shlex.quote(model)}"
    key_rows = "".join(f"<li><code>{_e(k)}</code>{' (verified)' if k == verified_keyid else ''}</li>"
                       for k in keyids) or "<li>none</li>"
    return (f"<p>Check the signature, the statement and that the report is about your exact model file:</p>"
            f"<pre>{_e(command)}</pre>"
            "<p><code>lipcert.pub.pem</code> is the public key with this key id:</p>"
            f"<ul>{key_rows}</ul>"
            "<p>Get the key from its owner out of band (not from the server that produced this report: a compromised "
            "server would hand out its own key) and pin its id: list it under <code>trusted_keys</code> in the "
            "deployment policy, and <code>lipcert gate</code> refuses a report signed by any other key.</p>"
            "<p>The key id is the SHA-256 of the public key's DER SubjectPublicKeyInfo; check a key file with:</p>"
            f"<pre>{_e('openssl pkey -pubin -in lipcert.pub.pem -outform DER | sha256sum')}</pre>"
            f'<p class="muted">The model file\'s SHA-256 must be <code>{_e(digest)}</code>.</p>')


# ---------------------------------------------------------------------------------------------------------- page
def strip_chart(groups: dict[str, dict[str, list[float]]], title: str) -> str:
    """Per measure (``groups``: measure -> {group: values}), one row of dots per group on a shared [0, 1]-style axis,
    each group's mean marked: two distributions side by side, for a handful of values each."""
    left, right, row_h, top = 150, 24, 22, 14
    width = 860
    rows = [(measure, group, values) for measure, by_group in groups.items() for group, values in by_group.items()]
    height = top + row_h * len(rows) + 40
    values = [v for _, _, vs in rows for v in vs]
    lo, hi = min([0.0, *values]), max([1.0, *values])
    xa = Axis(lo, hi, left, width - right)
    bottom = top + row_h * len(rows)
    body = _x_axis(xa, nice_ticks(lo, hi), bottom, top, "value per direction (dots) and mean (bar)")
    colors = [COLORS["upper"], COLORS["lower"]]
    for i, (measure, group, vs) in enumerate(rows):
        y = top + row_h * (i + 0.5)
        color = colors[list(groups[measure]).index(group) % len(colors)]
        body.append(_text(left - 8, y + 4, f"{measure}: {group}", "end"))
        body += [f'<circle cx="{xa(v):.1f}" cy="{y:.1f}" r="3.5" fill="{color}" fill-opacity="0.55"/>' for v in vs]
        if vs:
            mean = sum(vs) / len(vs)
            body.append(_line(xa(mean), y - 8, xa(mean), y + 8, COLORS["attack"], 2.0))
    return _svg(width, height, body, title)


def _units_grid(u: dict, lo: float, hi: float) -> str:
    """One row per direction: its label, purity and the top inputs as small images."""
    shape, inputs = u.get("input_shape") or [], u.get("inputs") or {}
    rows = []
    for d in u.get("directions") or []:
        name = f"unit {d.get('unit')}" if d.get("kind") == "unit" else "random"
        imgs = "".join(f'<img alt="sample {_e(i)}, label {_e(label)}" title="sample {_e(i)}, label {_e(label)}" '
                       f'style="width:36px;height:36px;image-rendering:pixelated;border:1px solid #ccd" '
                       f'src="{_data_uri(to_pixels(to_hwc(inputs[str(i)], shape), lo, hi))}">'
                       for i, label in zip(d.get("top") or [], d.get("labels") or []))
        rows.append(f'<div style="display:flex;gap:3px;align-items:center;margin:2px 0">'
                    f'<span style="width:150px;font-size:12px">{_e(name)}: purity {_e(fmt(d.get("purity")))}</span>'
                    f"{imgs}</div>")
    return "".join(rows)


def _units_section(p: dict) -> str:
    u = (p.get("analyses") or {}).get("units")
    if _skipped(u):
        return _skipped_note(_skipped(u))
    measures = ("purity", "cosine")
    rows = [[m, u[m]["unit_mean"], u[m]["random_mean"], u[m]["difference"], u[m]["p_value"]] for m in measures]
    directions = u.get("directions") or []
    groups = {m: {kind: [d[m] for d in directions if d.get("kind") == kind] for kind in ("unit", "random")}
              for m in measures}
    intro = (f'<p class="muted">Do the units of {_e(u.get("node"))} ({_e(fmt(u.get("width")))} values) mean more than '
             f"random directions? For each, the top {_e(fmt(u.get('top_n')))} of {_e(fmt(u.get('samples')))} inputs: "
             "label purity (fraction sharing the majority label) and mean pairwise cosine similarity of their "
             f"activations; p from a two-sided permutation test ({_e(fmt(u.get('permutations')))} permutations). "
             "Szegedy et al. (2013) found no difference.</p>")
    page = intro + _table(["coherence", "units", "random", "difference", "p"], rows, numeric=(1, 2, 3, 4))
    page += strip_chart(groups, "per-direction coherence, units against random directions")
    layout = image_layout(u.get("input_shape") or [])
    if layout is not None and u.get("inputs"):
        page += _units_grid(u, *_input_range(p))
    return page


def _properties_section(p: dict) -> str:
    section = p.get("properties")
    if _skipped(section):
        return _skipped_note(_skipped(section))
    intro = (f'<p class="muted">Each VNN-LIB property decided on the model as uploaded, within '
             f"{_e(fmt(section.get('timeout_s')))} s: holds = proved (the bounds include the float32 evaluation "
             "error), violated = a counterexample confirmed in onnxruntime, unknown = not decided in time.</p>")
    return intro + _table(*property_table(p), numeric=(3,))


def _statement_and_keyids(document: dict) -> tuple[dict, list[str], bool]:
    """(statement, signature key ids, signed?) from a DSSE envelope or a bare statement. Signatures are NOT checked."""
    from certify.report.dsse import VerificationError, peek_statement

    if not isinstance(document, dict):
        raise ValueError("a report is a JSON object (a DSSE envelope or an in-toto statement)")
    if "_type" in document:
        return document, [], False
    try:
        statement = peek_statement(document)
    except VerificationError as e:
        raise ValueError(f"not a readable report: {e.code}: {e.message}") from None
    return statement, [s["keyid"] for s in document["signatures"]], True


def render_report_html(envelope_or_statement: dict, *, verified_keyid: str | None = None,
                       report_name: str = "report.json") -> str:
    """The report as one self-contained HTML page.

    ``verified_keyid`` says the caller verified the envelope with that trusted key (the page shows it as verified);
    without it the page says the signature was not checked. ``report_name`` is the file name used in the
    verification command. Raises ValueError when the document is neither an envelope nor a statement.
    """
    statement, keyids, signed = _statement_and_keyids(envelope_or_statement)
    p = statement.get("predicate")
    if not isinstance(p, dict):
        raise ValueError("the statement has no predicate object")
    subjects = statement.get("subject") or [{}]
    subject = subjects[0] if isinstance(subjects, list) and isinstance(subjects[0], dict) else {}
    if verified_keyid:
        banner = f'<p class="banner ok">VERIFIED: signed by trusted key {_e(verified_keyid)}</p>'
    elif signed:
        banner = ('<p class="banner warn">NOT VERIFIED: this page does not check the signature; run the command '
                  'in "Verify this report" before relying on it.</p>')
    else:
        banner = '<p class="banner warn">NOT VERIFIED: an unsigned statement.</p>'
    name = subject.get("name") or "unnamed model"
    head = (f"<h1>Robustness report: {_e(name)}</h1>{banner}"
            + _kv([("model sha256", (subject.get("digest") or {}).get("sha256")), ("created", p.get("created")),
                   ("predicate type", statement.get("predicateType"))]
                  + ([("eps space", p["input"].get("description"))] if isinstance(p.get("input"), dict) else [])))
    warnings = [w for w in p.get("warnings") or [] if isinstance(w, str)]
    head += "".join(f'<p class="banner warn">WARNING: {_e(w)}</p>' for w in warnings)
    sections = [
        _section("Model", "model", lambda: _model_section(p)),
        _section("Lipschitz bounds", "bounds", lambda: _bounds_section(p)),
        _section("Certified and attacked accuracy", "accuracy", lambda: _accuracy_section(p)),
        _section("Minimal perturbations", "perturbations", lambda: _perturbation_section(p)),
        _section("Adversarial examples", "examples", lambda: _examples_section(p)),
        *([_section("Units versus random directions", "units", lambda: _units_section(p))]
          if "units" in (p.get("analyses") or {}) else []),
        *([_section("VNN-LIB properties", "properties", lambda: _properties_section(p))]
          if "properties" in p else []),
        _section("Policy verdict", "policy", lambda: _policy_section(p)),
        _section("Verify this report", "verify",
                 lambda: _verify_section(subject, [verified_keyid] if verified_keyid else keyids, verified_keyid,
                                         report_name, signed)),
        _section("Checks, stages and environment", "details", lambda: _checks_section(p)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>{_e(f'lipcert report: {name}')}</title><style>{PAGE_CSS}</style></head>"
            f"<body><main><section id=\"summary\">{head}</section>{''.join(sections)}"
            "<p class=\"muted\">Made by lipcert. Charts are drawn from the report's own numbers.</p>"
            "</main></body></html>\n")
