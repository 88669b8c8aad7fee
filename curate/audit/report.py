"""What an audit writes: ``audit.json``, ``samples.parquet``, the sample PNGs and grid, and
its section of the HTML report (generations beside their nearest training images)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from curate.audit import sanity
from curate.audit.scoring import AuditResult
from curate.audit.settings import DEFINITIONS
from curate.core.images import tensor_to_pil
from curate.io.training import TrainingSet
from curate.report import Report, esc, histogram_svg, html_table, thumb_grid


def _grid(images: list, columns: int = 16, min_cell: int = 64):
    """One PNG-able grid of equally sized PIL images, upscaled (nearest) to ``min_cell`` px."""
    from PIL import Image

    w, h = images[0].size
    scale = max(1, math.ceil(min_cell / max(w, h)))
    cw, ch = w * scale, h * scale
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    grid = Image.new(images[0].mode, (cols * cw + cols - 1, rows * ch + rows - 1), color=255)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img.resize((cw, ch), Image.Resampling.NEAREST), (c * (cw + 1), r * (ch + 1)))
    return grid


def write_audit(result: AuditResult, train: TrainingSet, out_dir: Path | str, report=None) -> Path:
    """Write audit.json, samples.parquet, sample PNGs and the report section (to ``report``,
    default ``out_dir/report``); returns ``out_dir``."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")
    result.per_sample.write_parquet(out / "samples.parquet")
    pils = tensor_to_pil(result.samples)
    for i, img in enumerate(pils):
        img.save(out / "samples" / f"{i:05d}.png")
    _grid(pils[:256]).save(out / "samples_grid.png")
    if report is None:
        report = Report(out / "report", title="curate audit")
    report.add_section("audit", "Memorization audit", audit_section_html(result, train), order=10)
    return out


def generation_check_html(check: dict) -> str:
    """The boxed warning of ``curate.audit.sanity.generation_check`` (``""`` when none)."""
    if not check.get("warning"):
        return ""
    return (
        '<div class="group audit-warning" style="border:2px solid #c0392b;background:#fdecea">'
        f"<p><b>Warning: {esc(check['warning'])}.</b></p>"
        '<p class="muted">These generations do not look like the training images, so the '
        "copy rates below read low whatever the model would copy when it works; they are not "
        f"evidence against memorization. Rule: {esc(check['definition'])}</p></div>"
    )


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def audit_section_html(result: AuditResult, train: TrainingSet, max_pairs: int = 48) -> str:
    """The report section: summary table, histograms, and generations beside their nearest
    training images, worst copies first."""
    import polars as pl

    s = result.summary
    m = s["metrics"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    rows = [
        [
            "generations / training (distinct)",
            f"{s['num_samples']} / {s['num_train']} ({s['num_train_distinct']})",
            "",
        ],
        [
            f"memorized, NN1/NN2 < {m['nn_ratio']['threshold']:.3g}",
            pct(m["nn_ratio"]["fraction_memorized"]),
            pct(m["nn_ratio"]["train_leave_one_out_fraction"]),
        ],
        [
            f"memorized, normalised L2 < {m['normalized_l2']['threshold']:.3g} "
            f"(alpha {m['normalized_l2']['alpha']}, k {m['normalized_l2']['k']})",
            pct(m["normalized_l2"]["fraction_memorized"]),
            pct(m["normalized_l2"]["train_leave_one_out_fraction"]),
        ],
        [
            f"top-1 similarity ({m['similarity']['features']}) > {m['similarity']['threshold']:.3g}",
            pct(m["similarity"]["frac_above"]),
            pct(m["similarity"]["train_vs_train_frac_above"]),
        ],
        [
            "top-1 similarity p95 / max",
            f"{m['similarity']['p95']:.3f} / {m['similarity']['max']:.3f}",
            f"p95 {m['similarity']['train_vs_train_p95']:.3f}",
        ],
        [
            f"{m['frechet']['name']} (vs {m['frechet']['reference']}; not FID)",
            f"{m['frechet']['value']:.4g}",
            "",
        ],
    ]
    align = m.get("text_alignment")
    if align is not None:
        rows.append(
            [align.get("name", "text alignment"), _fmt(align.get("value")), align.get("note", "")]
        )
    header = ["metric", "generations", "training, leave-one-out (false-positive check)"]
    check = s.get("generation_check") or {}
    parts = [generation_check_html(check)] if check.get("warning") else []
    parts.append(html_table(rows, header))
    parts += [
        f'<p class="muted">Warning: {esc(w)}.</p>'
        for w in s.get("warnings", [])
        if w != check.get("warning")
    ]

    parts.append(histogram_svg(result.per_sample["nn_ratio"].to_list(), label="NN1/NN2 ratio"))
    parts.append(histogram_svg(result.per_sample["similarity"].to_list(), label="top-1 similarity"))
    by_id = {sid: i for i, sid in enumerate(train.sample_ids)}
    worst = result.per_sample.sort("nn_ratio").head(max_pairs)
    gen_pils = tensor_to_pil(result.samples[worst["index"].to_list()])
    nn_pils = tensor_to_pil(train.images[[by_id[s] for s in worst["nn_sample_id"].to_list()]])
    parts.append(
        f"<p>The {len(worst)} generations with the lowest NN1/NN2 ratio (most copy-like), each "
        "beside its nearest training image in pixel space.</p>"
    )
    parts.append('<div class="grid">')  # pairs flow side by side, worst first
    for row, g, t in zip(worst.iter_rows(named=True), gen_pils, nn_pils, strict=True):
        flag = "memorized" if row["memorized_ratio"] else "not memorized"
        parts.append(
            '<div class="group" style="margin:0">'
            + thumb_grid(
                [
                    (
                        g,
                        f"generation {row['index']}: ratio {row['nn_ratio']:.3f}, "
                        f"nL2 {row['normalized_l2']:.3f}, sim {row['similarity']:.3f} ({flag})",
                    ),
                    (
                        t,
                        f"nearest training image {row['nn_sample_id']} "
                        f"(x{row['nn_copies']} in training)",
                    ),
                ]
            )
            + "</div>"
        )
    parts.append("</div>")
    counts = result.training_counts(train).filter(pl.col("copies") > 0)
    counts = counts.unique("sample_id").sort(["copies", "sample_id"], descending=[True, False])
    if counts.height:
        parts.append(
            f"<p>{counts.height} training rows were copied (NN1 of a memorized generation); "
            "most copied first:</p>"
        )
        parts.append(
            html_table(
                [[r["sample_id"], r["copies"], r["nn_count"], f"{r['min_ratio']:.3f}"]
                 for r in counts.head(20).iter_rows(named=True)],
                ["training sample_id", "memorized generations", "generations with it as NN1",
                 "lowest ratio"],
            )
        )  # fmt: skip
    definitions = sorted(DEFINITIONS.items()) + [("generation_check", sanity.DEFINITION)]
    parts.append(html_table(definitions, ["metric", "definition"]))
    settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items())
    parts.append(f'<p class="muted">Settings: {esc(settings)}</p>')
    return "".join(parts)


def amg_pairs_html(
    plain: AuditResult,
    guided: AuditResult,
    train: TrainingSet,
    amg_samples=None,
    max_rows: int = 24,
) -> str:
    """Plain and AMG samples from the same seeds side by side (plain | guided | the plain
    sample's nearest training image), the plain run's worst copies (lowest NN1/NN2 ratio)
    first. ``amg_samples`` (``AMG.samples_frame()``) adds how many steps each was guided."""
    if len(plain.samples) != len(guided.samples):
        raise ValueError(f"{len(plain.samples)} plain but {len(guided.samples)} guided samples")
    by_id = {sid: i for i, sid in enumerate(train.sample_ids)}
    g_rows = {r["index"]: r for r in guided.per_sample.iter_rows(named=True)}
    steps = {}
    if amg_samples is not None:
        steps = dict(zip(amg_samples["sample"], amg_samples["amg_active_steps"], strict=True))
    worst = plain.per_sample.sort(["nn_ratio", "index"]).head(max_rows)
    order = worst["index"].to_list()
    plain_pils = tensor_to_pil(plain.samples[order])
    guided_pils = tensor_to_pil(guided.samples[order])
    nn_pils = tensor_to_pil(train.images[[by_id[s] for s in worst["nn_sample_id"].to_list()]])

    def label(row) -> str:
        flag = "memorized" if row["memorized_ratio"] else "not memorized"
        return f"ratio {row['nn_ratio']:.3f}, nL2 {row['normalized_l2']:.3f} ({flag})"

    parts = [
        f"<p>The same seeds sampled plainly and with AMG: the {len(order)} plain samples with "
        f"the lowest NN1/NN2 ratio (most copy-like) of {len(plain.samples)}, each as plain | "
        "AMG | the plain sample's nearest training image (pixel space).</p>",
        '<div class="grid amg-pairs">',
    ]
    for row, p_img, g_img, t_img in zip(
        worst.iter_rows(named=True), plain_pils, guided_pils, nn_pils, strict=True
    ):
        i = row["index"]
        g = g_rows[i]
        guided_note = f"; guided at {steps[i]} steps" if i in steps else ""
        cells = [
            (p_img, f"plain {i}: {label(row)}"),
            (g_img, f"AMG {i}: {label(g)}{guided_note}; nearest {g['nn_sample_id']}"),
            (t_img, f"nearest training image {row['nn_sample_id']} (of plain {i})"),
        ]
        parts.append(f'<div class="group" style="margin:0">{thumb_grid(cells)}</div>')
    parts.append("</div>")
    return "".join(parts)
