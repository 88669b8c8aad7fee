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
@seed_option
@device_option
@quiet_option
@curate_errors
def rank(dataset, model, out, run_dir, limit, estimator, axes, ode_steps, radius, t_start, flip,
         condition, batch_size, force, seed, device, quiet):  # fmt: skip
    """Rank every sample by the volume-growth rate of the probability-flow ODE.

    A high score means the model maps a large latent volume onto a small neighbourhood of the
    image: it reproduces that image easily. Scores are added to the run table (rank_vgr,
    rank_pct), shown in the report, and optionally written to --out.

    \b
    Examples:
      curate rank --dataset builtin:digits --limit 200 --out ranks.parquet
      curate rank --dataset runs/demo --model path/to/pipeline --estimator frame --axes 8 --ode-steps 4
    """
    from curate.device import resolve_device
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.rank import Rank

    setup_logging(quiet)
    if quiet:
        import datasets

        datasets.disable_progress_bars()
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
        if not summary or summary.get("fingerprint") != cfg.fingerprint():
            ingest(cfg, run, quiet=quiet)
    step = Rank(
        model=model, estimator=estimator, axes=axes, ode_steps=ode_steps, radius=radius,
        t_start=t_start, flip=flip, condition=condition, batch_size=batch_size,
    )  # fmt: skip
    problems = step.validate()
    if problems:
        raise click.UsageError("; ".join(problems))
    ctx = RunContext(run_dir=run, seed=seed, device=resolve_device(device), quiet=quiet)
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
