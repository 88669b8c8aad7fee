"""``curate rank``: score every sample by how easily a diffusion model reproduces it."""

from __future__ import annotations

from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, seed_option, setup_logging
from curate.cli.engine import cli_engine, echo_markers, engine_options
from curate.cli.options import config_keys, config_options, errors_as_flags, pop_config
from curate.rank.config import RankConfig

# what `rank` takes besides the RankConfig fields, as named in the errors
_RANK_JOB_KEYS = config_keys(
    RankConfig, "dataset", "run_dir", "limit", "shard", "engine", "ray_address", "device"
)


@click.command()
@click.option(
    "--dataset",
    "dataset",
    required=True,
    metavar="NAME_OR_RUN_DIR",
    help="A run folder (from `curate ingest`/`clean`), or anything `curate ingest --dataset` takes; then it is ingested first.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the scores (sample_id, vgr, percentile) to this parquet file.",
)
@click.option(
    "--run-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to ingest a dataset that is not a run folder yet (default: runs/rank-<name>).",
)
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=0),
    help="Ingest at most N rows (with a dataset name).",
)
@config_options(RankConfig)
@click.option("--force", is_flag=True, help="Recompute even if the run folder holds these scores.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Score only shard I of N (from 0) of a run folder into RUN_DIR/steps/NN-rank/shards/; "
    "then `curate merge RUN_DIR`. Under torchrun each process takes its own shard by itself.",
)
@engine_options
@seed_option
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_RANK_JOB_KEYS)
def rank(dataset, out, run_dir, limit, force, shard, engine, ray_address, seed, device, quiet,
         **settings):  # fmt: skip
    """Rank every sample by the volume-growth rate of the probability-flow ODE.

    Every ranking setting is a field of curate.rank.config.RankConfig, which the `rank` recipe
    step takes under the same names (--ode-steps here is ode_steps there); both run
    curate.rank.job.rank_job.

    A high score means the model maps a large latent volume onto a small neighbourhood of the
    image: it reproduces that image easily. Scores are added to the run table (rank_vgr,
    rank_pct), shown in the report, and optionally written to --out.

    What the score is validated for (reports/rank/validate_vgr.md): it separates images the
    model was trained on from unseen ones (train vs held-out AUC 0.999); it does not predict
    which images the model will copy (copied vs not-copied training images AUC 0.41). So
    --drop-top-fraction drops the rows the model reproduces most easily (most clearly seen in
    training), not the ones it would copy; `curate audit` measures copying.

    Many processes: under `torchrun --nproc_per_node P` each process scores the rows whose
    sample_id hashes to its rank (one GPU each, cuda:LOCAL_RANK; gloo on CPU), then process 0
    gathers them in sample_id order and writes the table: the same scores as one process.
    On many machines, run `--shard I/N` jobs and `curate merge`, or `--engine ray`: a Ray
    Data actor pool (one actor per GPU when the cluster has GPUs, each loading the model once)
    scores every shard, then this command merges them as in one process (with --shard, only
    that shard; then `curate merge`).

    \b
    Examples:
      curate rank --dataset builtin:digits --limit 200 --out ranks.parquet
      curate rank --dataset runs/demo --model path/to/pipeline --estimator frame --axes 8 --ode-steps 4
      torchrun --nproc_per_node 8 -m curate rank --dataset runs/demo --model path/to/pipeline
      curate rank --dataset runs/demo --shard 3/16   # ... for 0..15, then: curate merge runs/demo
      curate rank --dataset runs/demo --engine ray --ray-address auto
    \b
    Not `accelerate launch --cpu --num_processes 2`: it starts one process (accelerate issue
    2741); use torchrun, or accelerate's --multi_gpu with cpu=True in its config.
    """
    from curate.device import resolve_device
    from curate.steps.rank import rank_run

    setup_logging(quiet)
    if quiet:
        import datasets

        datasets.disable_progress_bars()
    config = pop_config(RankConfig, settings)
    runner, _, _ = cli_engine(engine, ray_address, shard, device=device)
    # with --engine ray the actors run on the --device asked for (auto: the cluster's GPUs when
    # it has any); this process, which merges, uses what it has
    here = "auto" if runner is not None and device.lower().startswith("cuda") else device
    done = rank_run(
        dataset, config, run_dir=run_dir, limit=limit, shard=shard, seed=seed,
        device=resolve_device(here), quiet=quiet, force=force, engine=runner,
    )  # fmt: skip
    run, step, table = done.run_dir, done.step, done.table
    if done.shard is not None:
        echo_markers([done.marker], run, lambda m: "rank:")
        return
    if table is None:  # a torchrun process other than 0: process 0 reports
        return
    import polars as pl

    scored = table.filter(pl.col("rank_vgr").is_not_null()).sort("rank_vgr", descending=True)
    cols = [
        "sample_id",
        "rank_vgr",
        "rank_pct",
        *[c for c in ("rank_vgr_empty", "rank_gap") if c in table.columns],
        "caption",
    ]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        scored.select(cols).write_parquet(out)
    if done.markers:
        ray = done.markers[0].get("engine") or {}
        how = f" on ray ({ray['actors']} actor(s))" if ray else ""
        click.echo(f"rank: {len(done.markers)} shard(s){how}, merged")
    click.echo(f"ranked {scored.height} samples of {run} with {step.model} ({step.estimator})")
    for row in scored.head(5).iter_rows(named=True):
        click.echo(f"  {row['sample_id']}  vgr={row['rank_vgr']:.3f}  {row['caption'] or ''}")
    click.echo(f"report: {run / 'report' / 'index.html'}" + (f"; scores: {out}" if out else ""))


COMMANDS = [rank]
