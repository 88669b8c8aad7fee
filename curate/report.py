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
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

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


def histogram_svg(
    values: Sequence[float], bins: int = 30, width: int = 480, height: int = 140, label: str = ""
) -> str:
    """A dependency-free inline SVG histogram."""
    import numpy as np

    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if vals.size == 0:
        return '<p class="muted">no values</p>'
    counts, edges = np.histogram(vals, bins=bins)
    top = max(int(counts.max()), 1)
    bar_w = width / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = (height - 20) * c / top
        x = i * bar_w
        bars.append(
            f'<rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="#4a78b0"><title>{edges[i]:.4g}–{edges[i + 1]:.4g}: {c}</title></rect>'
        )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="11">{edges[0]:.4g}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{edges[-1]:.4g}</text>'
        f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">{esc(label)}</text>'
    )
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}{axis}</svg>'


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
        path.write_text(json.dumps({"title": title, "html": body_html}), encoding="utf-8")
        return self.write()

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        parts = []
        for path in sorted(self.sections_dir.glob("*.json")) if self.sections_dir.exists() else []:
            sec = json.loads(path.read_text(encoding="utf-8"))
            parts.append(f"<section><h2>{esc(sec['title'])}</h2>{sec['html']}</section>")
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(self.title)}</h1>{''.join(parts)}</body></html>"
        )
        out = self.dir / "index.html"
        out.write_text(page, encoding="utf-8")
        return out
