"""``curate rank``: score every sample by how easily a diffusion model reproduces it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, seed_option, setup_logging


@click.command()
@click.option(
    "--dataset",
    "dataset",
    required=True,
    metavar="NAME_OR_RUN_DIR",
    help="A run folder (from `curate ingest`/`clean`), or anything `curate ingest --dataset` takes; then it is ingested first.",
)
@click.option(
    "--model",
    default="digits-tiny",
    show_default=True,
    metavar="MODEL_ID_OR_DIR",
    help="A diffusers pipeline folder, a model shipped with curate, or a Hub id.",
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
@click.option(
    "--estimator",
    type=click.Choice(["fd", "jvp", "frame"]),
    default="fd",
    show_default=True,
    help="fd: one axis, one step, finite difference (cheap); jvp: the same, exact; frame: K axes x M steps.",
)
@click.option(
    "--axes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="K, frame estimator only.",
)
@click.option(
    "--ode-steps",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="M, frame estimator only.",
)
@click.option(
    "--radius",
    default=0.05,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Offset radius r in [-1, 1] pixel units.",
)
@click.option(
    "--t-start",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Start of the ODE walk, as a fraction of the schedule.",
)
@click.option("--flip", is_flag=True, help="Average with the horizontally flipped image.")
@click.option(
    "--condition",
    type=click.Choice(["none", "caption"]),
    default="none",
    show_default=True,
    help="caption: condition on each sample's caption and report the gap to the empty prompt.",
)
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per forward pass.",
)
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
def rank(dataset, model, out, run_dir, limit, estimator, axes, ode_steps, radius, t_start, flip,
         condition, batch_size, force, shard, seed, device, quiet):  # fmt: skip
    """Rank every sample by the volume-growth rate of the probability-flow ODE.

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
    step = Rank(
        model=model, estimator=estimator, axes=axes, ode_steps=ode_steps, radius=radius,
        t_start=t_start, flip=flip, condition=condition, batch_size=batch_size,
    )  # fmt: skip
    problems = step.validate()
    if problems:
        raise click.UsageError("; ".join(problems))
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
    click.echo(f"ranked {scored.height} samples of {run} with {model} ({estimator})")
    for row in scored.head(5).iter_rows(named=True):
        click.echo(f"  {row['sample_id']}  vgr={row['rank_vgr']:.3f}  {row['caption'] or ''}")
    click.echo(f"report: {run / 'report' / 'index.html'}" + (f"; scores: {out}" if out else ""))


COMMANDS = [rank]
