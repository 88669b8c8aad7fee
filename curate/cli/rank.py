"""``curate rank``: score every sample by how easily a diffusion model reproduces it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, seed_option, setup_logging
from curate.cli.options import config_keys, config_options, errors_as_flags, pop_config
from curate.rank.config import RankConfig

# what `rank` takes besides the RankConfig fields, as named in the errors
_RANK_JOB_KEYS = config_keys(RankConfig, "dataset", "run_dir", "limit", "shard", "device")


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
@seed_option
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_RANK_JOB_KEYS)
def rank(dataset, out, run_dir, limit, force, shard, seed, device, quiet, **settings):
    """Rank every sample by the volume-growth rate of the probability-flow ODE.

    Every ranking setting is a field of curate.rank.config.RankConfig, which the `rank` recipe
    step takes under the same names (--ode-steps here is ode_steps there).

    A high score means the model maps a large latent volume onto a small neighbourhood of the
    image: it reproduces that image easily. Scores are added to the run table (rank_vgr,
    rank_pct), shown in the report, and optionally written to --out.

    Many processes: under `torchrun --nproc_per_node P` each process scores the rows whose
    sample_id hashes to its rank (one GPU each, cuda:LOCAL_RANK; gloo on CPU), then process 0
    gathers them in sample_id order and writes the table: the same scores as one process.
    On many machines, run `--shard I/N` jobs and `curate merge`.

    \b
    Examples:
      curate rank --dataset builtin:digits --limit 200 --out ranks.parquet
      curate rank --dataset runs/demo --model path/to/pipeline --estimator frame --axes 8 --ode-steps 4
      torchrun --nproc_per_node 8 -m curate rank --dataset runs/demo --model path/to/pipeline
      curate rank --dataset runs/demo --shard 3/16   # ... for 0..15, then: curate merge runs/demo
    \b
    Not `accelerate launch --cpu --num_processes 2`: it starts one process (accelerate issue
    2741); use torchrun, or accelerate's --multi_gpu with cpu=True in its config.
    """
    from curate.device import resolve_device
    from curate.errors import UsageError
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.rank import Rank

    setup_logging(quiet)
    if quiet:
        import datasets

        datasets.disable_progress_bars()
    from curate.rank.distributed import Launch

    launch = Launch.from_env(resolve_device(device))
    if launch.world > 1 and shard is not None:
        raise click.UsageError("--shard and torchrun: each torchrun process takes its own shard")
    path = Path(dataset)
    if (path / "table.parquet").exists():
        run = path
    else:
        from curate.io.ingest import IngestConfig, ingest, read_ingest_summary

        run = run_dir or Path("runs") / (
            "rank-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")
        )
        cfg = IngestConfig(name=dataset, limit=limit)
        summary = read_ingest_summary(run)
        if launch.rank == 0 and (not summary or summary.get("fingerprint") != cfg.fingerprint()):
            ingest(cfg, run, quiet=quiet)
        launch.barrier()  # the other processes wait for process 0's ingest
    step = pop_config(Rank, settings)
    problems = step.validate()
    if problems:
        raise UsageError("; ".join(problems))
    ctx = RunContext(run_dir=run, seed=seed, device=launch.device, quiet=quiet)
    if shard is not None or launch.world > 1:
        from curate.shards import cli_argv, merge_run, parse_shard, shard_apply

        i, n = parse_shard(shard) if shard is not None else (launch.rank, launch.world)
        (marker,) = shard_apply(run, [step], i, n, ctx, argv=cli_argv(), force=force)
        state = "done before, skipped" if marker.get("skipped") else f"{marker['seconds']:.1f}s"
        if shard is not None:
            click.echo(f"rank: shard {i}/{n}, {marker['rows']} rows ({state})")
            click.echo(f"when all {n} shards are done: curate merge {run}")
            return
        launch.barrier()  # every process has written its shard
        if launch.rank != 0:
            launch.close()
            return
        merge_run(run, device=launch.device, quiet=quiet, force=force)
        launch.close()
        from curate.table import read_table

        table = read_table(run)
    else:
        table = apply_step(run, step, ctx, force=force)
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
    click.echo(f"ranked {scored.height} samples of {run} with {step.model} ({step.estimator})")
    for row in scored.head(5).iter_rows(named=True):
        click.echo(f"  {row['sample_id']}  vgr={row['rank_vgr']:.3f}  {row['caption'] or ''}")
    click.echo(f"report: {run / 'report' / 'index.html'}" + (f"; scores: {out}" if out else ""))


COMMANDS = [rank]
