"""The report of a folder of samples (``curate sample``): ``OUT/report/index.html``.

One self-contained page (inline thumbnails, no network): the settings the samples were made
with, a grid of the first samples (a full listing of all of them, HTML + CSV, beside the page
when there are more), and with AMG how many samples were guided, at how many steps, by which
guidances. AMG's own section (the similarity trajectories, ``curate.guidance.run.write_amg``)
goes on the same page: pass it the returned ``Report``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curate.report import Report, histogram_svg, html_table, more_link, thumb_grid, write_listing

GRID_LIMIT = 64  # samples shown as thumbnails; the listing has every one
# the AMG guidances as samples.jsonl records them, and their names
GUIDANCES = (
    ("amg_used_spe", "spe", "despecification"),
    ("amg_used_dup", "dup", "caption deduplication"),
    ("amg_used_sim", "sim", "dissimilarity"),
)


def _guidances(record: Mapping[str, Any]) -> list[str]:
    return [short for key, short, _ in GUIDANCES if record.get(key)]


def _caption(record: Mapping[str, Any]) -> str:
    text = f"#{record['index']}"
    if record.get("prompt"):
        text += f": {record['prompt']}"
    if "amg_active_steps" in record:
        steps = int(record["amg_active_steps"] or 0)
        text += (
            f" | AMG: {steps} guided steps ({', '.join(_guidances(record)) or 'none'})"
            if steps
            else " | AMG: not guided"
        )
    return text


def amg_summary_html(records: Sequence[Mapping[str, Any]]) -> str:
    """How many samples AMG guided, how many steps each, and which guidances (from the
    per-sample records ``amg_active_steps``, ``amg_used_spe|dup|sim``)."""
    n = len(records)
    steps = [int(r.get("amg_active_steps") or 0) for r in records]
    guided = sum(s > 0 for s in steps)
    used = [(name, short, sum(bool(r.get(key)) for r in records)) for key, short, name in GUIDANCES]
    parts = [
        f"<p>AMG guided {guided} of {n} samples at one or more steps; "
        f"{sum(steps) / max(n, 1):.2f} guided steps per sample on average "
        f"(most: {max(steps, default=0)}).</p>",
        html_table(
            [[f"{name} ({short})", count] for name, short, count in used]
            + [["guided at >= 1 step", guided], ["not guided", n - guided]],
            ["guidance", "samples"],
        ),
    ]
    if n:
        parts.append(histogram_svg(steps, xlabel="guided steps per sample", ylabel="samples"))
    parts.append(
        '<p class="muted">Per-step records: amg_steps.parquet; summary: amg.json; per sample: '
        "samples.jsonl.</p>"
    )
    return "".join(parts)


def write_sample_report(
    out_dir: Path | str,
    records: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    limit: int = GRID_LIMIT,
    title: str = "curate sample",
) -> Report:
    """Write ``out_dir/report/index.html`` for the samples in ``out_dir``; returns its ``Report``.

    ``records`` are the samples' ``samples.jsonl`` rows (``index``, ``file`` relative to
    ``out_dir``, ``prompt``; ``amg_*`` with AMG), ``settings`` what they were made with
    (sampler, steps, guidance, seed, ...), shown as a table. The first ``limit`` samples are
    thumbnails; ``report/samples.html`` (+ ``.csv``) lists all. The report folder is the
    samples folder's own: sections of an earlier run into the same folder are dropped.
    """
    from PIL import Image

    out = Path(out_dir)
    report_dir = out / "report"
    for old in (report_dir / "sections").glob("*.json"):
        old.unlink()  # a rerun replaces the page (an earlier --amg section would be stale)
    report = Report(report_dir, title=title)
    amg = any("amg_active_steps" in r for r in records)
    parts = [html_table([[k, v] for k, v in settings.items()], ["setting", "value"])]
    if amg:
        parts.append(amg_summary_html(records))
    shown = list(records[: max(limit, 0)])
    cells = []
    for rec in shown:
        with Image.open(out / rec["file"]) as img:
            cells.append((img.copy(), _caption(rec)))
    parts.append(f"<p>{len(records)} samples (PNG files in this folder).</p>")
    parts.append(thumb_grid(cells))
    header = ["index", "file", "prompt"] + (["amg guided steps", "amg guidances"] if amg else [])
    rows = [
        [r["index"], r["file"], r.get("prompt") or ""]
        + ([int(r.get("amg_active_steps") or 0), ",".join(_guidances(r))] if amg else [])
        for r in records
    ]
    listing = report_dir / "samples.html"
    write_listing(listing, rows, header, title="samples")
    parts.append(more_link(len(shown), len(records), listing, report_dir, "samples",
                           place="in the report folder"))  # fmt: skip
    report.add_section("samples", "Samples", "".join(parts), order=10)
    return report


def sample_settings(**settings: Any) -> dict[str, Any]:
    """The settings table of a sample report: ``None`` values dropped, names with spaces, a
    mapping (e.g. the AMG config) as ``key=value, ...``."""

    def text(v: Any) -> Any:
        if isinstance(v, Mapping):
            return ", ".join(f"{k}={','.join(map(str, x)) if isinstance(x, list) else x}"
                             for k, x in v.items())  # fmt: skip
        return v

    return {k.replace("_", " "): text(v) for k, v in settings.items() if v is not None}
