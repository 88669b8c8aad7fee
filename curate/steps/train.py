"""``train``: train a diffusion model on the kept rows; writes ``RUN_DIR/<out>``, adds no columns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl

from curate.steps.base import RunContext, Step
from curate.train.config import TrainConfig, setting


@dataclass(frozen=True)
class Train(TrainConfig, Step):
    """Trains on the rows selection keeps so far (``status == "ok"``, no ``*_drop`` set) and
    writes a diffusers pipeline folder to ``RUN_DIR/<out>`` (default ``model``), which later
    steps (``audit``) and ``curate sample`` read. A rerun continues from the newest checkpoint
    when the settings are unchanged. The report gets a sample grid and the loss curve.

    Its settings are every ``TrainConfig`` field (``curate train --help`` describes them) plus
    ``out`` and ``report_samples``; ``seed`` defaults to the recipe's.
    """

    name: ClassVar[str] = "train"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status")

    seed: int | None = setting(None, "Random seed (default: the recipe's seed).")
    out: str = setting("model", "Model folder, inside the run folder.")
    report_samples: int = setting(16, "Samples in the report's grid.", min=0)

    def required_columns(self) -> tuple[str, ...]:
        extra = tuple(c for c in (self.sigma_n_column, self.noisy_only_column) if c)
        return self.requires + extra

    def train_config(self, recipe_seed: int = 0) -> TrainConfig:
        """The ``TrainConfig`` part of this step, with the recipe's seed unless one is set."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        if self.seed is None:
            values["seed"] = recipe_seed
        return TrainConfig(**values)

    def validate(self) -> list[str]:
        from curate.io.folders import RUN_ENTRIES

        problems = self.problems()  # TrainConfig's checks, over this step's fields
        if not self.out or Path(self.out).is_absolute() or ".." in Path(self.out).parts:
            problems.append("out: a folder name inside the run folder, e.g. model")
        elif Path(self.out).parts[0] in RUN_ENTRIES:
            problems.append(
                f"out: {self.out!r} is where the run keeps its own files; use e.g. model"
            )
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.train.job import RunRows, train_job

        if table.height == 0:  # nothing ingested: nothing to train (a table with rows but no
            # kept row is an error, raised by from_table)
            ctx.stats["train_samples"] = 0
            return pl.DataFrame()
        out = ctx.run_dir / self.out
        job = train_job(
            RunRows(table, ctx.images()),
            out,
            self.train_config(ctx.seed),
            device=ctx.device,
            resume="auto",  # continue a checkpoint with the same settings, else start over
            overwrite=True,
            quiet=ctx.quiet,
            info={"dataset": str(ctx.run_dir)},
        )
        ctx.stats.update(
            {"train_samples": job.num_samples, "model_dir": str(out), "steps": job.config.steps}
        )
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
