"""``rank``: score every sample by how easily a diffusion model reproduces it (VGR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from curate.rank.config import RankConfig
from curate.steps.base import RunContext, Step
from curate.table import DROP_SUFFIX, SAMPLE_ID


@dataclass(frozen=True)
class Rank(RankConfig, Step):
    """Adds ``rank_vgr`` (log volume-growth rate of the PF-ODE) and ``rank_pct`` (1.0 = riskiest).

    With ``condition: caption`` (text-conditional models) also ``rank_vgr_empty`` (the empty
    prompt) and ``rank_gap`` (own caption minus empty prompt: a caption that acts as a key to
    one image shows a large gap). ``flag_top_fraction`` adds ``rank_flag``;
    ``drop_top_fraction`` adds ``rank_drop`` so the riskiest samples are removed.

    Its settings are every ``RankConfig`` field (``curate rank --help`` describes them).
    """

    name: ClassVar[str] = "rank"
    shardable: ClassVar[bool] = True

    def produced_columns(self) -> tuple[str, ...]:
        cols = ["rank_vgr", "rank_pct"]
        if self.condition == "caption":
            cols += ["rank_vgr_empty", "rank_gap"]
        if self.flag_top_fraction is not None:
            cols.append("rank_flag")
        if self.drop_top_fraction is not None:
            cols.append(f"rank{DROP_SUFFIX}")
        return tuple(cols)

    def validate(self) -> list[str]:
        return self.problems()  # RankConfig's checks

    def _score_columns(self) -> list[str]:
        return ["vgr", "vgr_empty", "gap"] if self.condition == "caption" else ["vgr"]

    def shard_values(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """Per-row part: the scores (``vgr``; ``vgr_empty``, ``gap`` with captions) of
        ``table``'s ok rows; the percentiles, flags and drops need every row (``compute``)."""
        ok = table.filter(pl.col("status") == "ok")
        scores = self._scores(ok, ctx)
        out = table.select(SAMPLE_ID)
        if scores is None:
            return out.with_columns(
                pl.lit(None, pl.Float64).alias(c) for c in self._score_columns()
            )
        return out.join(scores, on=SAMPLE_ID, how="left", maintain_order="left")

    def _scores(self, ok: pl.DataFrame, ctx: RunContext) -> pl.DataFrame | None:
        """``sample_id`` + score columns for the ok rows, in their order (None when none)."""
        from curate.rank.ranker import rank_samples

        if not ok.height:
            return None
        if ctx.shard_values is not None:  # curate merge: the shards scored them
            from curate.shards import lookup

            scores = lookup(ctx.shard_values, ok[SAMPLE_ID].to_list())
            scores = scores.select(SAMPLE_ID, *self._score_columns())
            if scores["vgr"].null_count():
                sid = scores.filter(pl.col("vgr").is_null())[SAMPLE_ID][0]
                from curate.errors import DataError

                raise DataError(f"rank: the shards hold no score for sample_id {sid}; rerun them")
            return scores
        from curate.models.denoiser import load_denoiser

        den = load_denoiser(self.model, device=ctx.device)
        encoder, captions = None, None
        if self.condition == "caption":
            from curate.core.text import text_encoder_for_model

            encoder = text_encoder_for_model(den, ctx.device, kind=self.text_encoder)
            captions = ok["caption"].fill_null("").to_list()
        store = ctx.images()
        return rank_samples(
            den,
            ok[SAMPLE_ID].to_list(),
            store.get,
            self.vgr_config(ctx.seed),
            captions=captions,
            text_encoder=encoder,
            batch_size=self.batch_size,
            shard_dir=ctx.artifact_dir("shards"),
            shard_size=self.shard_size,
            model_key=str(den.info.get("path", self.model)),
            progress=None if ctx.quiet else ctx.progress,
        )

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        import numpy as np

        from curate.rank.ranker import percentile

        ok = table.filter(pl.col("status") == "ok")
        scores = self._scores(ok, ctx)
        if scores is not None:
            scores = scores.with_columns(pct=pl.Series(percentile(scores["vgr"].to_numpy())))
            self._report(ctx, ok, scores)
        out = table.select(SAMPLE_ID)
        if scores is None:
            scores = pl.DataFrame(schema={SAMPLE_ID: pl.String, "vgr": pl.Float64, "pct": pl.Float64,
                                          "vgr_empty": pl.Float64, "gap": pl.Float64})  # fmt: skip
        joined = out.join(scores, on=SAMPLE_ID, how="left", maintain_order="left")
        cols = [pl.col("vgr").alias("rank_vgr"), pl.col("pct").alias("rank_pct")]
        if self.condition == "caption":
            cols += [pl.col("vgr_empty").alias("rank_vgr_empty"), pl.col("gap").alias("rank_gap")]
        if self.flag_top_fraction is not None:
            cols.append((pl.col("pct") > 1 - self.flag_top_fraction).alias("rank_flag"))
        if self.drop_top_fraction is not None:
            reason = f"top {self.drop_top_fraction:.0%} volume-growth rate (easily reproduced)"
            cols.append(
                pl.when(pl.col("pct") > 1 - self.drop_top_fraction)
                .then(pl.lit(reason))
                .otherwise(pl.lit(None, dtype=pl.String))
                .alias(f"rank{DROP_SUFFIX}")
            )
        result = joined.select(cols)
        if scores.height:
            vgr = scores["vgr"].to_numpy()
            ctx.stats.update(mean=float(np.mean(vgr)), std=float(np.std(vgr)), scored=int(vgr.size))
        return result

    def _report(
        self, ctx: RunContext, ok: pl.DataFrame, scores: pl.DataFrame, top: int = 24
    ) -> None:
        from curate.report import esc, histogram_svg, thumb_grid

        worst = scores.sort("vgr", descending=True).head(top)
        ids = worst[SAMPLE_ID].to_list()
        caps = dict(zip(ok[SAMPLE_ID].to_list(), ok["caption"].to_list(), strict=True))
        images = ctx.images().get(ids)
        items = [
            (img, f"{sid} vgr={v:.2f}: {caps.get(sid) or ''}")
            for img, sid, v in zip(images, ids, worst["vgr"], strict=True)
        ]
        body = (
            f"<p>Model <code>{esc(self.model)}</code>, estimator <b>{self.estimator}</b> "
            f"(r={self.radius}, t_start={self.t_start}, axes={self.axes}, steps={self.ode_steps}). "
            "Higher = the model reproduces the image more easily.</p>"
            + histogram_svg(scores["vgr"].to_list(), label="log volume-growth rate")
            + f"<h3>The {len(ids)} riskiest samples</h3>"
            + thumb_grid(items)
        )
        ctx.report.add_section("rank", "Reproduction risk (volume-growth rate)", body, order=40)
