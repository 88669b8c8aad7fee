"""``train``: train a diffusion model on the kept rows; writes ``RUN_DIR/<out>``, adds no columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl

from curate.steps.base import RunContext, Step


@dataclass(frozen=True)
class Train(Step):
    """Trains on the rows selection keeps so far (``status == "ok"``, no ``*_drop`` set) and
    writes a diffusers pipeline folder to ``RUN_DIR/<out>`` (default ``model``), which later
    steps (``audit``) and ``curate sample`` read. A rerun continues from the newest checkpoint
    when the settings are unchanged. The report gets a sample grid and the loss curve.
    """

    name: ClassVar[str] = "train"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status")

    objective: Literal["ddpm", "ambient"] = "ddpm"
    sigma_n: float = 0.5
    sigma_n_column: str | None = None
    noisy_only_column: str | None = None
    ambient_noise: Literal["fixed", "redraw"] = "fixed"
    model: str = "tiny"
    resolution: int | None = None
    channels: int | None = None  # default: 1 for tiny, 3 otherwise
    conditioning: Literal["none", "caption"] = "none"
    text_encoder: str = "minilm"
    caption_transform: str | None = None
    caption_p: float | None = None
    embedding_noise: float = 0.0
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    steps: int = 2000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float | None = None
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    out: str = "model"
    report_samples: int = 16

    def required_columns(self) -> tuple[str, ...]:
        extra = tuple(c for c in (self.sigma_n_column, self.noisy_only_column) if c)
        return self.requires + extra

    def _config(self):
        from curate.train.loop import TrainConfig

        channels = self.channels or (1 if self.model == "tiny" else 3)
        return TrainConfig(
            objective=self.objective,
            sigma_n=self.sigma_n,
            ambient_noise=self.ambient_noise,
            sigma_n_column=self.sigma_n_column,
            noisy_only_column=self.noisy_only_column,
            model=self.model,
            resolution=self.resolution,
            channels=channels,
            conditioning=self.conditioning,
            text_encoder=self.text_encoder,
            embedding_noise=self.embedding_noise,
            prediction_type=self.prediction_type,
            steps=self.steps,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            lr=self.lr,
            ema_decay=self.ema_decay,
            checkpoint_every=self.checkpoint_every,
        )

    def validate(self) -> list[str]:
        import re

        from curate.errors import UsageError

        problems = []
        try:
            self._config().validate()
        except UsageError as err:  # name the recipe key instead of the CLI flag
            problems.append(re.sub(r"--([a-z][a-z-]*)", lambda m: m[1].replace("-", "_"), str(err)))
        if self.caption_transform and self.conditioning != "caption":
            problems.append("caption_transform: needs conditioning: caption")
        from curate.io.folders import RUN_ENTRIES

        if not self.out or Path(self.out).is_absolute() or ".." in Path(self.out).parts:
            problems.append("out: a folder name inside the run folder, e.g. model")
        elif Path(self.out).parts[0] in RUN_ENTRIES:
            problems.append(
                f"out: {self.out!r} is where the run keeps its own files; use e.g. model"
            )
        return problems

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        import dataclasses

        from curate.errors import UsageError
        from curate.models.presets import build_model, preset_defaults
        from curate.train.data import from_table
        from curate.train.loop import train

        if table.height == 0:  # nothing ingested: nothing to train (a table with rows but no
            # kept row is an error, raised by from_table)
            ctx.stats["train_samples"] = 0
            return pl.DataFrame()
        config = dataclasses.replace(self._config(), seed=ctx.seed)
        res = config.resolution or preset_defaults(config.model)["resolution"]
        if res is None:  # sd-finetune: the checkpoint fixes the image size
            res = build_model(config.model, channels=config.channels).image_resolution
            config = dataclasses.replace(config, resolution=res)
        data = from_table(
            table,
            ctx.images(),
            channels=config.channels,
            resolution=res,
            sigma_n_column=config.sigma_n_column,
            noisy_only_column=config.noisy_only_column,
        )
        transform = None
        if self.caption_transform:
            from curate.captions.transforms import make_transform

            transform = make_transform(self.caption_transform, p=self.caption_p, seed=ctx.seed)
        out = ctx.run_dir / self.out
        kwargs = dict(device=ctx.device, caption_transform=transform, quiet=ctx.quiet)
        try:
            train(data, out, config, resume=_has_checkpoint(out), overwrite=True, **kwargs)
        except UsageError as err:
            if not str(err).startswith("--resume"):
                raise
            train(data, out, config, overwrite=True, **kwargs)  # settings changed: start over
        ctx.stats.update({"train_samples": len(data), "model_dir": str(out), "steps": config.steps})
        self._report(out, ctx, table)
        return pl.DataFrame()

    def _report(self, out: Path, ctx: RunContext, table: pl.DataFrame) -> None:
        import json

        from curate.models.denoiser import CURATE_CONFIG, load_denoiser
        from curate.models.sampling import sample
        from curate.models.text import text_encoder_for_model
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
        images = _to_pil(x)
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


def _has_checkpoint(out: Path) -> bool:
    return any((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else False


def _to_pil(x) -> list:
    import numpy as np
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # (N, C, H, W)
    return [
        Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(np.moveaxis(a, 0, -1))
        for a in arr
    ]


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
