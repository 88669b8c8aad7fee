"""``train``: train a diffusion model on the kept rows; writes ``RUN_DIR/<out>``, adds no columns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl

from curate.steps.base import RunContext, Step
from curate.train.config import TrainConfig, setting

# The column ``sigma_n_rules`` write into the table the model trains on (never into the run's).
SIGMA_N_RULES_COLUMN = "train_sigma_n"
TRAINED_ROWS_FILE = "trained_rows.parquet"  # in the step folder: sample_id (+ its sigma_n)


@dataclass(frozen=True)
class Train(TrainConfig, Step):
    """Trains on the rows selection keeps so far (``status == "ok"``, no ``*_drop`` set) and
    writes a diffusers pipeline folder to ``RUN_DIR/<out>`` (default ``model``), which later
    steps (``audit``) and ``curate sample`` read. A rerun continues from the newest checkpoint
    when the settings are unchanged. The report gets a sample grid and the loss curve.

    Its settings are every ``TrainConfig`` field (``curate train --help`` describes them) plus
    ``out``, ``report_samples``, ``rows`` and ``sigma_n_rules``; ``seed`` defaults to the recipe's.

    ``rows: all`` trains on every row ingest accepted, whatever later steps marked for removal
    (the naive baseline of a protect loop); ``kept`` (default) on the rows selection keeps.
    ``sigma_n_rules`` (with ``objective: ambient``) gives each row its ambient noise level from
    the curation columns: a list of ``{where: SQL rule, sigma_n: level}``, the first rule true
    for a row wins, rows no rule matches get ``sigma_n``. E.g. rows in a duplicate group or with
    a caption shared by other images only ever seen above noise 1.0, the others clean::

        objective: ambient
        sigma_n: 0.0
        sigma_n_rules:
          - {where: "dedup_images_cluster IS NOT NULL OR dedup_captions_flag", sigma_n: 1.0}

    The rows a model will copy are better found by a proxy: a model trained on the same rows
    with another seed and audited (an ``audit`` step with ``id: proxy_audit`` adds
    ``audit_proxy_audit_copies``); its copies predict another seed's at AUC 0.78-0.82 where
    the curation columns score 0.51-0.54 (``reports/protect/proxy.md``,
    ``recipes/protect_digits_proxy.yaml``)::

          - {where: "audit_proxy_audit_copies > 0", sigma_n: 1.0}
    """

    name: ClassVar[str] = "train"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status")

    seed: int | None = setting(None, "Random seed (default: the recipe's seed).")
    out: str = setting("model", "Model folder, inside the run folder.")
    report_samples: int = setting(16, "Samples in the report's grid.", min=0)
    rows: Literal["kept", "all"] = setting(
        "kept", "kept: the rows selection keeps; all: every row ingest accepted (a baseline)."
    )
    sigma_n_rules: tuple[dict[str, Any], ...] | None = setting(
        None, "Per-row ambient noise from curation columns: [{where: SQL, sigma_n: level}, ...]."
    )

    def required_columns(self) -> tuple[str, ...]:
        extra = tuple(c for c in (self.sigma_n_column, self.noisy_only_column) if c)
        return self.requires + extra

    def train_config(self, recipe_seed: int = 0) -> TrainConfig:
        """The ``TrainConfig`` part of this step, with the recipe's seed unless one is set."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        if self.seed is None:
            values["seed"] = recipe_seed
        if self.sigma_n_rules:
            values["sigma_n_column"] = SIGMA_N_RULES_COLUMN
        return TrainConfig(**values)

    def output_dir(self, ctx: RunContext) -> Path:
        return ctx.run_dir / self.out

    def outputs_exist(self, ctx: RunContext, meta: dict[str, Any]) -> bool:
        if not (meta.get("stats") or {}).get("train_samples"):
            return True  # nothing was trained
        return (ctx.run_dir / self.out / "curate_train.json").is_file()

    def training_table(self, table: pl.DataFrame) -> pl.DataFrame:
        """The table the model trains on: ``rows: all`` ignores the removal marks (``*_drop``);
        ``sigma_n_rules`` add the per-row noise level as ``SIGMA_N_RULES_COLUMN``."""
        from curate.table import DROP_SUFFIX, evaluate_rule

        if self.rows == "all":
            table = table.drop([c for c in table.columns if c.endswith(DROP_SUFFIX)])
        if self.sigma_n_rules:
            level = pl.Series([None] * table.height, dtype=pl.Float64)
            for i, rule in enumerate(self.sigma_n_rules):
                hit = evaluate_rule(table, rule["where"], f"train.sigma_n_rules[{i + 1}].where")
                take = hit.fill_null(False) & level.is_null()
                level = pl.select(
                    pl.when(take).then(pl.lit(float(rule["sigma_n"]))).otherwise(level)
                ).to_series()
            table = table.with_columns(level.fill_null(self.sigma_n).alias(SIGMA_N_RULES_COLUMN))
        return table

    def validate(self) -> list[str]:
        from curate.io.folders import RUN_ENTRIES

        problems = self.problems()  # TrainConfig's checks, over this step's fields
        for i, rule in enumerate(self.sigma_n_rules or (), start=1):
            key = f"sigma_n_rules[{i}]"
            if not isinstance(rule, dict) or set(rule) != {"where", "sigma_n"}:
                problems.append(f"{key}: a mapping {{where: SQL rule, sigma_n: level}}")
            elif not isinstance(rule["sigma_n"], int | float) or rule["sigma_n"] < 0:
                problems.append(f"{key}.sigma_n: a number >= 0, got {rule['sigma_n']!r}")
            elif not isinstance(rule["where"], str):
                problems.append(f"{key}.where: a SQL rule over the table's columns")
        if self.sigma_n_rules:
            if self.objective != "ambient":
                problems.append("sigma_n_rules: needs objective: ambient")
            if self.sigma_n_column:
                problems.append("sigma_n_rules: give either sigma_n_rules or sigma_n_column")
        if not self.out or Path(self.out).is_absolute() or ".." in Path(self.out).parts:
            problems.append("out: a folder name inside the run folder, e.g. model")
        elif Path(self.out).parts[0] in RUN_ENTRIES:
            problems.append(
                f"out: {self.out!r} is where the run keeps its own files; use e.g. model"
            )
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.table import kept_rows, write_table
        from curate.train.job import RunRows, train_job

        if table.height == 0:  # nothing ingested: nothing to train (a table with rows but no
            # kept row is an error, raised by from_table)
            ctx.stats["train_samples"] = 0
            return pl.DataFrame()
        out = ctx.run_dir / self.out
        train_table = self.training_table(table)
        if ctx.step_dir is not None:  # which rows this model trained on (and at what noise)
            cols = ["sample_id"] + ([SIGMA_N_RULES_COLUMN] if self.sigma_n_rules else [])
            write_table(kept_rows(train_table).select(cols), ctx.step_dir / TRAINED_ROWS_FILE)
        job = train_job(
            RunRows(train_table, ctx.images()),
            out,
            self.train_config(ctx.seed),
            device=ctx.device,
            resume="auto",  # continue a checkpoint with the same settings, else start over
            overwrite=True,
            quiet=ctx.quiet,
            info={"dataset": str(ctx.run_dir)},
        )
        ctx.stats.update(
            {"train_samples": job.num_samples, "model_dir": str(out), "steps": job.config.steps,
             "rows": self.rows}
        )  # fmt: skip
        if self.sigma_n_rules:
            levels = kept_rows(train_table)[SIGMA_N_RULES_COLUMN]
            ctx.stats["sigma_n_rows"] = {
                str(v): int(n) for v, n in levels.value_counts().sort(SIGMA_N_RULES_COLUMN).rows()
            }
        self._report(out, ctx, table)
        return pl.DataFrame()

    def _report(self, out: Path, ctx: RunContext, table: pl.DataFrame) -> None:
        import json

        from curate.core.images import tensor_to_pil
        from curate.core.text import text_encoder_for_model
        from curate.models.denoiser import CURATE_CONFIG, load_denoiser
        from curate.models.sampling import sample
        from curate.report import esc, html_table, thumb_grid

        info = json.loads((out / CURATE_CONFIG).read_text())
        den = load_denoiser(out, ctx.device)
        num = self.report_samples
        cond, prompts = None, [""] * num
        if den.conditional:
            caps = [c for c in table.filter(pl.col("status") == "ok")["caption"].to_list() if c]
            prompts = [caps[i % len(caps)] for i in range(num)] if caps else [""] * num
            cond = text_encoder_for_model(den, ctx.device).encode(prompts)
        x = sample(den, num, steps=25, seed=ctx.seed, cond=cond, device=ctx.device, progress=False)
        if den.vae is not None:
            x = den.decode(x.to(ctx.device)).cpu()
        images = tensor_to_pil(x)
        cfg = info["config"]
        rows = [
            (k, cfg[k])
            for k in ("objective", "sigma_n", "model", "conditioning", "steps", "batch_size")
        ]
        rows += [
            ("parameters", info["resolved"]["parameters"]),
            ("seconds", info["result"]["seconds"]),
        ]
        body = (
            f"<p>Model written to <code>{esc(out)}</code> ({info['data']['num_samples']} samples).</p>"
            + html_table(rows, ["setting", "value"])
            + loss_curve_svg(info["result"]["losses"])
            + thumb_grid(zip(images, prompts, strict=True), size=64)
        )
        ctx.report.add_section("train", "Training", body, order=80)


def loss_curve_svg(points: list, width: int = 480, height: int = 140) -> str:
    """An inline SVG polyline of ``(step, loss)`` points on a log-loss axis."""
    import math

    pts = [(s, v) for s, v in points if v and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return ""
    s0, s1 = pts[0][0], pts[-1][0]
    lo, hi = min(math.log(v) for _, v in pts), max(math.log(v) for _, v in pts)
    span_s, span_v = max(s1 - s0, 1), max(hi - lo, 1e-9)
    xy = " ".join(
        f"{(s - s0) / span_s * (width - 10) + 5:.1f},{(hi - math.log(v)) / span_v * (height - 30) + 5:.1f}"
        for s, v in pts
    )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<polyline points="{xy}" fill="none" stroke="#4a78b0" stroke-width="1.5"/>'
        f'<text x="5" y="{height - 4}" font-size="11">step {s0}</text>'
        f'<text x="{width - 5}" y="{height - 4}" font-size="11" text-anchor="end">step {s1}</text>'
        f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
        f"training loss (log) {math.exp(hi):.3g} to {math.exp(lo):.3g}</text></svg>"
    )
