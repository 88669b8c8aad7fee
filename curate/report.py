"""The run report: ``RUN_DIR/report/index.html``, one self-contained page (no network).

Steps contribute sections through one call, ``Report.add_section(key, title, html, order)``.
Each section is kept as an HTML fragment under ``report/sections/`` so a resumed run keeps the
sections of the steps it skipped, and ``index.html`` is rebuilt from the fragments after every
change. Thumbnails are inline base64 PNGs, so the page opens from disk anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from curate.io.folders import atomic_write_json, atomic_write_text, read_json

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;font-size:.9rem}
th{background:#f4f4f4}.grid{display:flex;flex-wrap:wrap;gap:.6rem}
.cell{width:136px;font-size:.75rem;word-wrap:break-word}.cell img{width:128px;height:128px;object-fit:contain;background:#eee;image-rendering:pixelated}
.noimg{width:128px;height:128px;background:#f0f0f0;color:#888;display:flex;align-items:center;justify-content:center}
.group{border:1px solid #ddd;padding:.4rem;margin:.4rem 0}.muted{color:#777}
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def png_data_uri(image, size: int = 128) -> str:
    """A PIL image as an inline ``data:`` URI, downscaled to fit ``size`` pixels."""
    img = image.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", compress_level=1)  # fast; thumbnails are small
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumb_grid(items: Iterable[tuple[object, str]], size: int = 128) -> str:
    """A grid of ``(PIL image or None, caption)`` cells."""
    cells = []
    for image, caption in items:
        if image is None:
            pic = '<div class="noimg">no image</div>'
        else:
            pic = f'<img src="{png_data_uri(image, size)}" alt="">'
        cells.append(f'<div class="cell">{pic}<div>{esc(caption)}</div></div>')
    return '<div class="grid">' + "".join(cells) + "</div>"


def html_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CHAR_W = 6.2  # px per character of the 10 px axis font (digits, system-ui): for label spacing


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, integer: bool = False) -> list[float]:
    """At most ``max_ticks`` round values (1, 2, 2.5 or 5 times a power of ten apart) covering
    ``[lo, hi]``: the first at or below ``lo``, the last at or above ``hi``."""
    import math

    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    max_ticks = max(2, max_ticks)
    for n in range(max_ticks - 1, 0, -1):  # n intervals
        raw = (hi - lo) / n
        mag = 10.0 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
        if integer:
            step = max(1.0, float(math.ceil(step)))
        first = math.floor(lo / step + 1e-9)
        last = math.ceil(hi / step - 1e-9)
        ticks = [k * step for k in range(first, last + 1)]
        ticks = [0.0 if abs(t) < step * 1e-9 else t for t in ticks]
        if len(ticks) <= max_ticks:
            return ticks
    return [ticks[0], ticks[-1]]  # round ends one step apart or more


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Tick values with just enough decimals to tell neighbours apart (0.9999 | 0.995, 1.000)."""
    import math

    if not ticks:
        return []
    if len(ticks) == 1:
        return [f"{ticks[0]:.4g}"]
    step = min(abs(b - a) for a, b in zip(ticks[:-1], ticks[1:], strict=True) if b != a)
    big = max(abs(t) for t in ticks)
    if big >= 1e5 or step < 1e-5:
        return [f"{t:.3g}" for t in ticks]
    dec = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(round(step * 10**dec) - step * 10**dec) > 1e-6:  # a 2.5 step: one more decimal
        dec += 1
    out = [f"{t:.{dec}f}" for t in ticks]
    return [s[1:] if s.startswith("-") and float(s) == 0 else s for s in out]


def _fit_ticks(lo: float, hi: float, span_px: float, integer: bool = False, vertical=False):
    """The most ticks (at most 6) whose labels do not overlap along ``span_px`` pixels."""
    for n in range(6, 1, -1):
        ticks = nice_ticks(lo, hi, n, integer=integer)
        labels = tick_labels(ticks)
        if len(ticks) < 2:
            return ticks, labels
        gap = span_px / (len(ticks) - 1)
        need = 18 if vertical else max(len(s) for s in labels) * _CHAR_W + 6
        if gap >= need:
            return ticks, labels
    ticks = nice_ticks(lo, hi, 2, integer=integer)
    return ticks, tick_labels(ticks)


def histogram_svg(
    values: Sequence[float],
    bins: int = 30,
    width: int = 480,
    height: int = 140,
    label: str = "",
    *,
    threshold: float | Mapping[str, float] | None = None,
    threshold_label: str = "threshold",
    xlabel: str | None = None,
    ylabel: str = "count",
) -> str:
    """A dependency-free inline SVG histogram with axes.

    The x axis has a few round tick values whose labels never overlap (fewer ticks on a narrow
    plot), titled ``xlabel`` (default ``label``); the y axis counts rows per bin, titled
    ``ylabel`` with the number of values. ``threshold`` draws a dashed vertical line with its
    value written above it (``"<threshold_label> 0.52"``); a mapping ``{label: value}`` draws one
    labelled line each (per tier or size band). The axis range is widened to include every
    threshold. Each bar's tooltip gives its bin and count.
    """
    import math

    import numpy as np

    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if vals.size == 0:
        return '<p class="muted">no values</p>'
    if threshold is None:
        lines: list[tuple[str, float]] = []
    elif isinstance(threshold, Mapping):
        lines = [(str(k), float(v)) for k, v in threshold.items() if v is not None]
    else:
        lines = [(threshold_label, float(threshold))]
    lines = [(k, v) for k, v in lines if np.isfinite(v)]
    lo = min([float(vals.min())] + [v for _, v in lines])
    hi = max([float(vals.max())] + [v for _, v in lines])
    if hi <= lo:  # one value: a unit-wide range around it, as numpy does
        lo, hi = lo - 0.5, hi + 0.5
    left, right, bottom = 44, 24, 34  # room for half a 7-character tick label at each end
    top = 8 + 13 * len(lines)
    pw, ph = max(width - left - right, 10), max(height - top - bottom, 10)
    xt, xl = _fit_ticks(lo, hi, pw)
    if np.all(vals == np.round(vals)) and hi - lo <= 200:  # counts, bits: whole-number bins
        width_ = max(1, math.ceil((math.floor(hi) - math.ceil(lo) + 1) / bins))
        edges_in = np.arange(math.ceil(lo) - 0.5, math.floor(hi) + 0.5 + width_, width_)
        counts, edges = np.histogram(vals, bins=edges_in)
    else:
        counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    x0, x1 = min(xt[0], float(edges[0])), max(xt[-1], float(edges[-1]))
    yt, yl = _fit_ticks(0, max(int(counts.max()), 1), ph, integer=True, vertical=True)
    ytop = max(yt[-1], 1)

    def sx(v: float) -> float:
        return left + pw * (v - x0) / (x1 - x0)

    def sy(c: float) -> float:
        return top + ph - ph * c / ytop

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="10">'
    ]
    bin_dec = max(0, 1 - math.floor(math.log10(edges[1] - edges[0])))  # tell bins apart
    fmt = (
        (lambda v: f"{v:.4g}") if bin_dec > 8 or abs(hi) >= 1e5 else (lambda v: f"{v:.{bin_dec}f}")
    )
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        xa, xb = sx(a), sx(b)
        parts.append(
            f'<rect class="bar" x="{xa:.1f}" y="{sy(c):.1f}" width="{max(xb - xa - 1, 1):.1f}" '
            f'height="{top + ph - sy(c):.1f}" fill="#4a78b0"><title>{fmt(a)}–{fmt(b)}: {c}</title>'
            "</rect>"
        )
    axis = 'stroke="#555" stroke-width="1"'
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" {axis}/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" {axis}/>')
    for t, s in zip(xt, xl, strict=True):
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" {axis}/>'
        )
        parts.append(
            f'<text class="xtick" x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{s}</text>'
        )
    for t, s in zip(yt, yl, strict=True):
        y = sy(t)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" {axis}/>')
        parts.append(
            f'<text class="ytick" x="{left - 6}" y="{y + 3:.1f}" text-anchor="end">{s}</text>'
        )
    title = xlabel if xlabel is not None else label
    title = f"{title} (n={vals.size})" if title else f"n={vals.size}"
    parts.append(
        f'<text class="xlabel" x="{left + pw / 2:.1f}" y="{height - 3}" '
        f'text-anchor="middle">{esc(title)}</text>'
    )
    if ylabel:
        cy = top + ph / 2
        parts.append(
            f'<text class="ylabel" x="10" y="{cy:.1f}" text-anchor="middle" fill="#555" '
            f'transform="rotate(-90 10 {cy:.1f})">{esc(ylabel)}</text>'
        )
    for i, (name, v) in enumerate(lines):
        x = sx(v)
        text = f"{name} {v:.6g}" if name else f"{v:.6g}"
        w = len(text) * _CHAR_W
        anchor = "middle"
        if x - w / 2 < left:
            anchor = "start"
        elif x + w / 2 > width - 2:
            anchor = "end"
        parts.append(
            f'<line class="threshold" x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{top + ph}" '
            'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="4 2"/>'
        )
        parts.append(
            f'<text class="threshold-label" x="{x:.1f}" y="{top - 4 - 13 * (len(lines) - 1 - i)}" '
            f'text-anchor="{anchor}" fill="#c0392b">{esc(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def write_listing(
    path: Path | str,
    rows: Iterable[Sequence[object]],
    header: Sequence[str],
    title: str = "",
) -> tuple[Path, Path]:
    """Write a full listing twice: ``path`` as a self-contained HTML table and the same rows as
    CSV beside it (``path`` with suffix ``.csv``). Returns ``(html_path, csv_path)``."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [list(r) for r in rows]
    csv_path = path.with_suffix(".csv")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(["" if c is None else c for c in r] for r in rows)
    csv_path.write_text(buf.getvalue(), encoding="utf-8")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title or path.stem)}"
        f"</title><style>{_CSS}</style></head><body><h1>{esc(title or path.stem)}</h1>"
        f'<p>{len(rows)} rows; also as <a href="{esc(csv_path.name)}">CSV</a>.</p>'
        f"{html_table(rows, header)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path, csv_path


def more_link(
    shown: int,
    total: int,
    listing: Path | str,
    report_dir: Path | str,
    what: str,
    place: str = "in the step folder",
) -> str:
    """``"… and M more <what> …: full listing (CSV) <place>"`` linking to ``listing`` relative to
    the report folder (so ``RUN_DIR/report/index.html`` opens ``RUN_DIR/steps/NN-name/…``);
    ``""`` when nothing was left out."""
    import os

    more = total - shown
    if more <= 0:
        return ""
    listing = Path(listing)
    href = Path(os.path.relpath(listing, Path(report_dir))).as_posix()
    csv_href = Path(os.path.relpath(listing.with_suffix(".csv"), Path(report_dir))).as_posix()
    return (
        f'<p class="more">… and {more} more {esc(what)} (the first {shown} of {total} are '
        f'shown): <a href="{esc(href)}">full listing of all {total}</a> '
        f'(<a href="{esc(csv_href)}">CSV</a>) {esc(place)}.</p>'
    )


def limited_gallery(
    items: Sequence[object],
    render: Callable[[object], str],
    *,
    limit: int,
    listing_path: Path | str,
    listing_rows: Iterable[Sequence[object]],
    listing_header: Sequence[str],
    report_dir: Path | str,
    what: str = "groups",
    title: str = "",
) -> str:
    """The first ``limit`` of ``items`` rendered by ``render(item) -> html``, then "and M more"
    with a link to a full listing of every item.

    The full listing is always written (``write_listing(listing_path, listing_rows,
    listing_header, title)``: HTML + CSV, normally in the step folder, e.g.
    ``ctx.step_dir / "groups.html"``), so the run folder holds every group even when the
    report shows a few; ``listing_rows`` covers all items (e.g. one row per group member:
    group, kept id, member id, evidence, similarity). ``report_dir`` is the folder of the
    ``index.html`` that will hold the returned HTML (``RUN_DIR / "report"``); the link is
    relative to it. ``what`` names the items in the text ("duplicate groups").
    """
    write_listing(listing_path, listing_rows, listing_header, title)
    shown = list(items[: max(limit, 0)])
    body = "".join(render(item) for item in shown)
    return body + more_link(len(shown), len(items), listing_path, report_dir, what)


class Report:
    """Collects sections for one run and writes ``index.html``."""

    def __init__(self, report_dir: Path | str, title: str = "curate report"):
        self.dir = Path(report_dir)
        self.sections_dir = self.dir / "sections"
        self.title = title

    def add_section(self, key: str, title: str, body_html: str, order: int = 50) -> Path:
        """Add or replace the section ``key``; lower ``order`` comes first. Rebuilds the page."""
        self.sections_dir.mkdir(parents=True, exist_ok=True)
        for old in self.sections_dir.glob(f"*--{key}.json"):
            old.unlink()
        path = self.sections_dir / f"{order:03d}--{key}.json"
        atomic_write_json(path, {"title": title, "html": body_html})
        return self.write()

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        parts = []
        for path in sorted(self.sections_dir.glob("*.json")) if self.sections_dir.exists() else []:
            sec = read_json(path)
            if sec is None or not isinstance(sec.get("html"), str):
                continue  # torn by a kill: the step that wrote it will write it again
            parts.append(f"<section><h2>{esc(sec['title'])}</h2>{sec['html']}</section>")
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(self.title)}</h1>{''.join(parts)}</body></html>"
        )
        return atomic_write_text(self.dir / "index.html", page)
