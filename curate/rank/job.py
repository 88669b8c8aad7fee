"""The ranking job: ``rank_job(rows, config)`` scores a run's usable rows by volume-growth rate
and marks the highest scores. The ``rank`` recipe step runs it (``compute``; its per-row part,
``rank_scores``, under ``--shard`` and torchrun), and ``curate rank`` runs that step on a run
folder (``curate.steps.rank.rank_run``), so the scoring, the percentiles, the flag and drop
rules, the stats and the report section are written here once.

What the score is validated for (``reports/rank/validate_vgr.md``): it separates the images a
model was trained on from held-out ones (AUC 0.999 on a tiny UNet after 2000 steps); it does not
predict which training images the model copies (copied vs not-copied training images AUC 0.41).
``drop_top_fraction`` therefore drops the rows the model reproduces most easily (most clearly
seen in training), not the ones it would copy.

Errors name config keys (``condition: ...``); the command turns them into flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import DataError
from curate.rank.config import RankConfig
from curate.table import DROP_SUFFIX, SAMPLE_ID

# What a row marked by drop_top_fraction carries as its removal reason.
DROP_REASON = (
    "top {:.0%} volume-growth rate (most easily reproduced: most clearly seen in training)"
)


@dataclass(frozen=True)
class RankRows:
    """The rows to rank: a run's table (its ``status == "ok"`` rows are scored) and its
    ``curate.io.store.ImageStore`` (anything with ``get(sample_ids) -> PIL images``)."""

    table: pl.DataFrame
    store: Any

    @classmethod
    def of_run(cls, run_dir: str | Path) -> RankRows:
        from curate.io.store import ImageStore
        from curate.table import read_table

        return cls(read_table(Path(run_dir)), ImageStore(run_dir))


@dataclass(frozen=True)
class RankJobResult:
    """``columns``: the ``rank_*`` columns, one row per input row in its order (nulls for rows
    not scored); ``scores``: ``sample_id``, ``vgr``, ``pct`` (and ``vgr_empty``, ``gap`` with
    captions) of the scored rows; ``stats``: mean, std and count of ``vgr``."""

    columns: pl.DataFrame
    scores: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def score_columns(config: RankConfig) -> list[str]:
    """The per-row score columns (besides ``sample_id``) the ranking computes."""
    return ["vgr", "vgr_empty", "gap"] if config.condition == "caption" else ["vgr"]


def rank_columns(config: RankConfig) -> tuple[str, ...]:
    """The run-table columns the ranking adds."""
    cols = ["rank_vgr", "rank_pct"]
    if config.condition == "caption":
        cols += ["rank_vgr_empty", "rank_gap"]
    if config.flag_top_fraction is not None:
        cols.append("rank_flag")
    if config.drop_top_fraction is not None:
        cols.append(f"rank{DROP_SUFFIX}")
    return tuple(cols)


def _no_cache(_key: Any, load: Callable[[], Any]) -> Any:
    return load()


def rank_scores(
    rows: RankRows,
    config: RankConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    shard_dir: Path | None = None,
    progress: Callable | None = None,
    cache: Callable[[Any, Callable[[], Any]], Any] = _no_cache,
) -> pl.DataFrame:
    """The per-row part: ``sample_id`` + :func:`score_columns` for every row of ``rows.table``
    (nulls for rows that are not ``ok``), in its order.

    Loads the model (and with ``condition: caption`` its text encoder) through ``cache(key,
    load)`` (a worker that keeps models between calls passes its own), scores the ok rows in
    chunks of ``shard_size``, each saved under ``shard_dir`` and reused by a rerun with the same
    model and settings."""
    from curate.core.text import text_encoder_for_model
    from curate.models.denoiser import load_denoiser
    from curate.rank.ranker import rank_samples

    ok = rows.table.filter(pl.col("status") == "ok")
    out = rows.table.select(SAMPLE_ID)
    if not ok.height:
        return out.with_columns(pl.lit(None, pl.Float64).alias(c) for c in score_columns(config))
    den = cache(
        ("denoiser", config.model, device), lambda: load_denoiser(config.model, device=device)
    )
    encoder = captions = None
    if config.condition == "caption":
        encoder = cache(
            ("text", config.model, config.text_encoder, device),
            lambda: text_encoder_for_model(den, device, kind=config.text_encoder),
        )
        captions = ok["caption"].fill_null("").to_list()
    scores = rank_samples(
        den,
        ok[SAMPLE_ID].to_list(),
        rows.store.get,
        config.vgr_config(seed),
        captions=captions,
        text_encoder=encoder,
        batch_size=config.batch_size,
        shard_dir=shard_dir,
        shard_size=config.shard_size,
        model_key=str(den.info.get("path", config.model)),
        progress=progress,
    )
    return out.join(scores, on=SAMPLE_ID, how="left", maintain_order="left")


def rank_job(
    rows: RankRows | str | Path,
    config: RankConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    shard_dir: Path | None = None,
    progress: Callable | None = None,
    cache: Callable[[Any, Callable[[], Any]], Any] = _no_cache,
    scores: pl.DataFrame | None = None,
    report=None,
) -> RankJobResult:
    """Rank the ok rows of ``rows`` (a :class:`RankRows`, or a run folder) with ``config``.

    ``scores``: the per-row scores computed before (the shards of ``--shard`` / torchrun, one
    row per ``sample_id`` with :func:`score_columns`); without them the model scores the rows
    (:func:`rank_scores`). The percentiles (1.0 = the highest score), ``rank_flag`` and
    ``rank_drop`` are over all scored rows. ``report`` (a ``curate.report.Report``) gets the
    section with the score histogram and the highest-scoring images.
    """
    import numpy as np

    from curate.rank.ranker import percentile

    problems = config.problems()
    if problems:
        from curate.errors import UsageError

        raise UsageError("; ".join(problems))
    if not isinstance(rows, RankRows):
        rows = RankRows.of_run(rows)
    table = rows.table
    ok_ids = table.filter(pl.col("status") == "ok")[SAMPLE_ID]
    cols = score_columns(config)
    if scores is None:
        per_row = rank_scores(
            rows, config, seed=seed, device=device, shard_dir=shard_dir, progress=progress,
            cache=cache,
        )  # fmt: skip
    else:
        per_row = scores
    scored = pl.DataFrame({SAMPLE_ID: ok_ids}, schema={SAMPLE_ID: pl.String}).join(
        per_row.select(SAMPLE_ID, *cols), on=SAMPLE_ID, how="left", maintain_order="left"
    )
    if scored["vgr"].null_count():
        sid = scored.filter(pl.col("vgr").is_null())[SAMPLE_ID][0]
        raise DataError(f"rank: no score for sample_id {sid}; rerun the shards that hold it")
    scored = scored.with_columns(
        pct=pl.Series(percentile(scored["vgr"].to_numpy()), dtype=pl.Float64)
    )
    joined = table.select(SAMPLE_ID).join(scored, on=SAMPLE_ID, how="left", maintain_order="left")
    out = [pl.col("vgr").alias("rank_vgr"), pl.col("pct").alias("rank_pct")]
    if config.condition == "caption":
        out += [pl.col("vgr_empty").alias("rank_vgr_empty"), pl.col("gap").alias("rank_gap")]
    if config.flag_top_fraction is not None:
        out.append((pl.col("pct") > 1 - config.flag_top_fraction).alias("rank_flag"))
    if config.drop_top_fraction is not None:
        out.append(
            pl.when(pl.col("pct") > 1 - config.drop_top_fraction)
            .then(pl.lit(DROP_REASON.format(config.drop_top_fraction)))
            .otherwise(pl.lit(None, dtype=pl.String))
            .alias(f"rank{DROP_SUFFIX}")
        )
    stats: dict[str, Any] = {}
    if scored.height:
        vgr = scored["vgr"].to_numpy()
        stats = dict(mean=float(np.mean(vgr)), std=float(np.std(vgr)), scored=int(vgr.size))
        if report is not None:
            add_report_section(report, config, table, scored, rows.store)
    return RankJobResult(columns=joined.select(out), scores=scored, stats=stats)


def add_report_section(
    report, config: RankConfig, table: pl.DataFrame, scores: pl.DataFrame, store, top: int = 24
) -> None:
    """The report's ranking section: the score histogram and the ``top`` highest scores."""
    from curate.report import esc, histogram_svg, thumb_grid

    worst = scores.sort("vgr", descending=True).head(top)
    ids = worst[SAMPLE_ID].to_list()
    caps = dict(zip(table[SAMPLE_ID].to_list(), table["caption"].to_list(), strict=True))
    images = store.get(ids)
    items = [
        (img, f"{sid} vgr={v:.2f}: {caps.get(sid) or ''}")
        for img, sid, v in zip(images, ids, worst["vgr"], strict=True)
    ]
    body = (
        f"<p>Model <code>{esc(config.model)}</code>, estimator <b>{config.estimator}</b> "
        f"(r={config.radius}, t_start={config.t_start}, axes={config.axes}, "
        f"steps={config.ode_steps}). Higher = the model reproduces the image more easily: a "
        "training image the model has clearly seen. The score tells training images from "
        "unseen ones; it does not predict which images the model copies.</p>"
        + histogram_svg(scores["vgr"].to_list(), label="log volume-growth rate")
        + f"<h3>The {len(ids)} most easily reproduced samples</h3>"
        + thumb_grid(items)
    )
    report.add_section("rank", "Reproduction risk (volume-growth rate)", body, order=40)
