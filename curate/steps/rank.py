"""``rank``: score every sample by how easily a diffusion model reproduces it (VGR).

The work is ``curate.rank.job.rank_job``; this module is the step that runs it on a run's table
and :func:`rank_run`, which runs the step on a run folder the way ``curate rank`` asks (ingest
first when given a dataset name, in one process, as one ``--shard`` or as torchrun processes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import polars as pl

from curate.rank.config import RankConfig
from curate.steps.base import RunContext, Step

if TYPE_CHECKING:
    from curate.shards import Engine


@dataclass(frozen=True)
class Rank(RankConfig, Step):
    """Adds ``rank_vgr`` (log volume-growth rate of the PF-ODE) and ``rank_pct`` (1.0 = the
    most easily reproduced).

    With ``condition: caption`` (text-conditional models) also ``rank_vgr_empty`` (the empty
    prompt) and ``rank_gap`` (own caption minus empty prompt: a caption that acts as a key to
    one image shows a large gap). ``flag_top_fraction`` adds ``rank_flag``;
    ``drop_top_fraction`` adds ``rank_drop``, which drops the rows the model reproduces most
    easily (most clearly seen in training). The score tells training images from unseen ones
    (AUC 0.999, ``reports/rank/``); it does not predict which images the model will copy
    (copied vs not-copied training images AUC 0.41), so it is no copy filter.

    Its settings are every ``RankConfig`` field (``curate rank --help`` describes them).
    """

    name: ClassVar[str] = "rank"
    shardable: ClassVar[bool] = True

    def produced_columns(self) -> tuple[str, ...]:
        from curate.rank.job import rank_columns

        return rank_columns(self)

    def validate(self) -> list[str]:
        return self.problems()  # RankConfig's checks

    def _rows(self, table: pl.DataFrame, ctx: RunContext):
        from curate.rank.job import RankRows

        return RankRows(table, ctx.images())

    def _options(self, ctx: RunContext) -> dict:
        return dict(
            seed=ctx.seed,
            device=ctx.device,
            shard_dir=ctx.artifact_dir("shards"),
            progress=None if ctx.quiet else ctx.progress,
            cache=ctx.model,
        )

    def shard_values(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        """Per-row part: the scores (``vgr``; ``vgr_empty``, ``gap`` with captions) of
        ``table``'s ok rows; the percentiles, flags and drops need every row (``compute``)."""
        from curate.rank.job import rank_scores

        return rank_scores(self._rows(table, ctx), self, **self._options(ctx))

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        from curate.rank.job import rank_job

        job = rank_job(
            self._rows(table, ctx),
            self,
            scores=ctx.shard_values,  # curate merge: the shards scored the rows
            report=ctx.report,
            **self._options(ctx),
        )
        ctx.stats.update(job.stats)
        return job.columns


# ---------------------------------------------------------------------------- curate rank


@dataclass(frozen=True)
class RankRun:
    """What :func:`rank_run` did. ``table``: the run table with the scores (None for a
    ``--shard`` job and on torchrun processes other than 0, which have nothing to report);
    ``shard``: (I, N) of a ``--shard`` job, with its part's ``marker``; ``markers``: every
    part's marker when an engine (``--engine ray``) scored the shards."""

    run_dir: Path
    step: Rank
    table: pl.DataFrame | None
    shard: tuple[int, int] | None = None
    marker: dict | None = None
    markers: tuple[dict, ...] = ()


def default_run_dir(dataset: str) -> Path:
    """Where ``curate rank`` ingests a dataset that is not a run folder: ``runs/rank-<name>``."""
    return Path("runs") / ("rank-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-"))


def rank_run(
    dataset: str | Path,
    config: RankConfig,
    *,
    run_dir: Path | None = None,
    limit: int | None = None,
    shard: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = False,
    force: bool = False,
    engine: Engine | None = None,
) -> RankRun:
    """Rank ``dataset`` (a run folder, or any source ``curate ingest`` takes, ingested into
    ``run_dir`` first, at most ``limit`` rows) with ``config`` as the ``rank`` step.

    One process: the step is applied (its scores resume from finished chunks; an unchanged
    step is not recomputed unless ``force``). ``shard="I/N"``: only shard I's per-row part,
    for ``curate merge``. Under torchrun (``WORLD_SIZE`` > 1) each process scores its own
    shard, then process 0 merges. Errors name keys (``shard: ...``, ``radius: ...``).
    """
    from dataclasses import fields

    from curate.core.launch import Launch
    from curate.errors import UsageError
    from curate.runner import apply_step
    from curate.table import table_exists

    step = Rank(**{f.name: getattr(config, f.name) for f in fields(RankConfig)})
    problems = step.validate()
    if problems:
        raise UsageError("; ".join(problems))
    launch = Launch.from_env(device)
    if launch.world > 1 and (shard is not None or engine is not None):
        launch.close()
        what = "shard" if engine is None else "engine"
        raise UsageError(f"{what}: not under torchrun, where each process takes its own shard")
    run = Path(dataset)
    if not table_exists(run):
        from curate.io.ingest import IngestConfig, ingest, read_ingest_summary

        run = run_dir or default_run_dir(str(dataset))
        cfg = IngestConfig(name=str(dataset), limit=limit)
        summary = read_ingest_summary(run)
        if launch.rank == 0 and (not summary or summary.get("fingerprint") != cfg.fingerprint()):
            ingest(cfg, run, quiet=quiet)
        launch.barrier()  # the other processes wait for process 0's ingest
    ctx = RunContext(run_dir=run, seed=seed, device=launch.device, quiet=quiet)
    if shard is None and engine is None and launch.world == 1:
        return RankRun(run, step, apply_step(run, step, ctx, force=force))
    from curate.shards import cli_argv, merge_run, parse_shard, shard_apply

    if engine is not None:
        markers = shard_apply(run, [step], None, None, ctx, argv=cli_argv(), force=force,
                              engine=engine)  # fmt: skip
        if shard is not None:
            (marker,) = markers
            return RankRun(run, step, None, (marker["shard"], marker["of"]), marker, (marker,))
        merge_run(run, device=launch.device, quiet=quiet, force=force)
        from curate.table import read_table

        return RankRun(run, step, read_table(run), markers=tuple(markers))
    i, n = parse_shard(shard) if shard is not None else (launch.rank, launch.world)
    (marker,) = shard_apply(run, [step], i, n, ctx, argv=cli_argv(), force=force)
    if shard is not None:
        return RankRun(run, step, None, (i, n), marker)
    launch.barrier()  # every process has written its shard
    if launch.rank != 0:
        launch.close()
        return RankRun(run, step, None)
    merge_run(run, device=launch.device, quiet=quiet, force=force)
    launch.close()
    from curate.table import read_table

    return RankRun(run, step, read_table(run))
