"""Data commands: ingest, clean (run a recipe), export, steps."""

from __future__ import annotations

import json
from pathlib import Path

import click

from curate.cli.common import curate_errors, device_option, quiet_option, setup_logging
from curate.cli.engine import cli_engine, echo_markers, engine_options
from curate.cli.options import config_keys, errors_as_flags

# The keys the ingest and folder errors name (`dataset: X: ...`, `out_dir: X: ...`), as flags.
_FOLDER_KEYS = ("out_dir", "overwrite")


def _ingest_keys() -> tuple[str, ...]:
    from curate.io.ingest import IngestConfig

    return ("dataset", *config_keys(IngestConfig), *_FOLDER_KEYS)


@click.command()
@click.option(
    "--dataset",
    "name",
    required=True,
    metavar="NAME_OR_PATH",
    help="Hub dataset name, save_to_disk folder, imagefolder, parquet/jsonl/csv file, or builtin:digits / builtin:photos.",
)
@click.option("--split", default="train", show_default=True, help="Split to load.")
@click.option(
    "--image-column",
    default=None,
    metavar="COL",
    help="Column holding images, paths or bytes (default: guessed).",
)
@click.option(
    "--caption-column",
    default=None,
    metavar="COL",
    help="Column holding the caption or list of captions; 'none' for uncaptioned data.",
)
@click.option(
    "--id-column",
    default=None,
    metavar="COL",
    help="Column to use as sample_id (default: a hash of the image bytes and caption, so "
    "reordering the source changes nothing).",
)
@click.option("--limit", default=None, type=click.IntRange(min=0), help="Ingest at most N rows.")
@click.option(
    "--streaming",
    is_flag=True,
    help="Stream a Hub dataset instead of downloading it (use with --limit).",
)
@click.option(
    "--max-pixels",
    default=64_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Reject images with more pixels than this (decompression-bomb guard).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder to create (new or empty), or an earlier run folder.",
)
@click.option(
    "--allow-outside-paths",
    is_flag=True,
    help="Read image paths that lead outside the dataset's folder (../, absolute paths); "
    "by default such rows are rejected as outside_dataset.",
)
@click.option(
    "--fetch/--no-fetch",
    "fetch_urls",
    default=True,
    show_default=True,
    help="Download http(s) image URLs (cached in RUN_DIR/downloads; opt-out headers such as "
    "X-Robots-Tag: noai are honoured). --no-fetch rejects them as url_not_fetched.",
)
@click.option(
    "--fetch-workers", default=16, show_default=True, type=click.IntRange(min=1),
    help="Concurrent downloads.",
)  # fmt: skip
@click.option(
    "--fetch-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
    help="Seconds per request before it counts as a timeout (retried with backoff).",
)  # fmt: skip
@click.option(
    "--fetch-retries", default=2, show_default=True, type=click.IntRange(min=0),
    help="Retries of a transient failure (timeout, refused connection, 408/429/5xx) before "
    "the row is rejected; each waits twice as long as the one before (0.5 s, 1 s, ...).",
)  # fmt: skip
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the data of a run folder that holds another dataset (its steps, report "
    "and export go too).",
)
@quiet_option
@curate_errors
@errors_as_flags(_ingest_keys)
def ingest(
    name, split, image_column, caption_column, id_column, limit, streaming, max_pixels, out,
    allow_outside_paths, fetch_urls, fetch_workers, fetch_timeout, fetch_retries, overwrite, quiet,
):  # fmt: skip
    """Load a dataset into a run folder: images + one table keyed by sample_id.

    Every input row becomes one table row; unusable rows are kept as status=rejected with a
    reason (undecodable, truncated, empty caption, http_404, opted_out, ...), never dropped
    silently. Image URLs are downloaded concurrently and cached, so a rerun resumes.

    \b
    Examples:
      curate ingest --dataset builtin:digits --out runs/digits
      curate ingest --dataset laion_subset.parquet --image-column url --out runs/laion
    """
    from curate.io.ingest import IngestConfig
    from curate.io.ingest import ingest as run_ingest

    setup_logging(quiet)
    _quiet_datasets(quiet)
    cfg = IngestConfig(
        name=name, split=split, image_column=image_column, caption_column=caption_column,
        id_column=id_column, limit=limit, streaming=streaming, max_pixels=max_pixels,
        allow_outside_paths=allow_outside_paths, fetch_urls=fetch_urls,
        fetch_workers=fetch_workers, fetch_timeout=fetch_timeout, fetch_retries=fetch_retries,
    )  # fmt: skip
    summary = run_ingest(cfg, out, quiet=quiet, overwrite=overwrite)
    rejected = sum(summary["rejected"].values())
    if summary.get("unchanged"):
        click.echo(
            f"unchanged: {out} already holds this ingest of {name} ({summary['rows']} rows: "
            f"{summary['kept']} ok, {rejected} rejected); --overwrite ingests again"
        )
        echo_notes(summary)
        return
    click.echo(
        f"ingested {summary['rows']} rows into {out}: {summary['kept']} ok, {rejected} rejected"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in summary['rejected'].items())})"
            if rejected
            else ""
        )
        + f" [{summary['rows_per_second']} rows/s]"
    )
    echo_notes(summary)


def echo_notes(summary: dict) -> None:
    """What ingest noticed but did not turn into rows (images no metadata lists, URLs)."""
    unlisted = (summary.get("notes") or {}).get("unlisted_images")
    if unlisted and unlisted.get("count"):
        first = ", ".join(unlisted.get("first") or [])
        click.echo(
            f"note: {unlisted['count']} image(s) in the folder are not listed in its metadata "
            f"and were not ingested (first: {first})"
        )
    urls = summary.get("rejected", {}).get("url_not_fetched")
    if urls:
        click.echo(f"note: {urls} row(s) hold URLs that were not fetched (--no-fetch)")
    retry = summary.get("urls_to_retry")
    if retry:
        click.echo(
            f"note: {retry} URL(s) failed with a timeout or server error; ingest again with "
            "--overwrite to retry them (what was downloaded is cached)"
        )


@click.command()
@click.option(
    "--recipe",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Recipe YAML file.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<recipe name>). Re-running resumes and skips finished steps.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, type-checked: steps.1.threshold=0.9, dataset.limit=100, seed=1.",
)
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the plan; do no work.")
@click.option("--force", is_flag=True, help="Recompute every step even if unchanged.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Let the recipe replace the run's data when its dataset settings changed, and an "
    "earlier export of another format.",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Run only the per-row part of the recipe's sharded steps (dedup_images, "
    "dedup_captions, rank) on shard I of N (from 0); then `curate merge RUN_DIR`.",
)
@engine_options
@device_option
@quiet_option
@curate_errors
@errors_as_flags(_FOLDER_KEYS)
def clean(recipe, out, overrides, dry_run, force, overwrite, shard, engine, ray_address, device,
          quiet):  # fmt: skip
    """Run a cleaning recipe: ingest, steps in order, export, report.

    The whole recipe is validated first; every problem is reported with its YAML path.

    With --shard I/N the first shard process to arrive ingests (the others wait for it), then
    each computes the per-row values (decode, hashes, embeddings, model scores) of the rows
    whose sample_id hashes to shard I, all N at once if you like. `curate merge RUN_DIR` runs
    the whole recipe from those values: the same table as one process.

    \b
    Examples:
      curate clean --recipe recipes/demo.yaml
      curate clean --recipe recipes/laion_subset.yaml --dry-run
      curate clean --recipe recipes/demo.yaml --set dataset.limit=20 --out runs/small
    \b
    In shards (Slurm array, then one merge job):
      sbatch --array=0-15 --wrap 'curate clean --recipe R.yaml --out runs/big --shard $SLURM_ARRAY_TASK_ID/16'
      sbatch --dependency=afterok:JOBID --wrap 'curate merge runs/big'
    """
    from curate.recipe import dump_yaml, load_recipe

    setup_logging(quiet)
    _quiet_datasets(quiet)
    rec = load_recipe(recipe, list(overrides))
    run_dir = out or Path("runs") / safe_folder_name(rec.name)
    if dry_run:
        click.echo(rec.plan())
        click.echo(f"run folder: {run_dir}")
        click.echo("--- resolved recipe ---")
        click.echo(dump_yaml(rec.resolved()))
        return
    from curate.device import resolve_device
    from curate.runner import run_recipe

    dev = resolve_device(device if device != "auto" else rec.device)
    if shard is not None or engine != "process" or ray_address is not None:
        from curate.shards import cli_argv, shard_recipe

        runner, i, n = cli_engine(
            engine, ray_address, shard, device=device if device != "auto" else rec.device
        )
        markers = shard_recipe(rec, run_dir, i, n, device=dev, quiet=quiet, force=force,
                               argv=cli_argv(), engine=runner)  # fmt: skip
        echo_markers(markers, run_dir, lambda m: f"  {m['index']:2d}. {m['step']:<16}")
        return
    results = run_recipe(rec, run_dir, device=dev, quiet=quiet, force=force, overwrite=overwrite)
    stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    for r in results:
        state = "skipped (unchanged)" if r.skipped else f"{r.seconds:.1f}s"
        click.echo(f"  {r.index:2d}. {r.name:<16} {state:<20} removed {r.removed}")
    click.echo(
        f"{stats['rows']} rows = {stats['kept']} kept + {stats['removed']} removed; "
        f"report: {run_dir / 'report' / 'index.html'}"
    )


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Recompute the global parts even if unchanged.")
@device_option
@quiet_option
@curate_errors
def merge(run_dir, force, device, quiet):
    """Gather the shards of RUN_DIR and run the global parts: the table of one process.

    Checks that every sample_id is in exactly one shard, computed with the same settings and
    data; then groups duplicates across shards, calibrates thresholds, applies keep policies,
    percentiles and selection, exactly as an unsharded run does, reading the shards' values
    instead of recomputing them. What runs is what the shards recorded in RUN_DIR/shards.json
    (a recipe from `curate clean --shard`, or `curate dedup` / `curate rank` steps).

    \b
    Examples:
      for i in 0 1 2; do curate dedup runs/big --shard $i/3 & done; wait
      curate merge runs/big
      sbatch --dependency=afterok:JOBID --wrap 'curate merge runs/big'
    """
    from curate.device import resolve_device
    from curate.shards import merge_run

    setup_logging(quiet)
    _quiet_datasets(quiet)
    done = merge_run(run_dir, device=resolve_device(device), quiet=quiet, force=force)
    stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    click.echo(
        f"merged {done['of']} shards of {', '.join(done['steps'])}: {stats['rows']} rows = "
        f"{stats['kept']} kept + {stats['removed']} removed; report: "
        f"{run_dir / 'report' / 'index.html'}"
    )


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["disk", "parquet", "hub"]),
    default="disk",
    show_default=True,
    help="disk: save_to_disk folder; parquet: shards under data/; hub: parquet shards pushed to --repo-id.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: RUN_DIR/export).",
)
@click.option(
    "--repo-id", default=None, metavar="USER/NAME", help="Hub dataset repo for --format hub."
)
@click.option("--private", is_flag=True, help="Create the Hub repo as private.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an earlier curate export at --out (another format or another run).",
)
@click.option(
    "--shard-rows",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per parquet shard.",
)
@quiet_option
@curate_errors
@errors_as_flags(_FOLDER_KEYS)
def export(run_dir, fmt, out, repo_id, private, overwrite, shard_rows, quiet):
    """Export the kept rows of a run, with removed.parquet, changes.parquet and a dataset card.

    \b
    Examples:
      curate export runs/demo --format parquet
      curate export runs/demo --format hub --repo-id me/clean-set --private
    """
    from curate.export import export_run

    setup_logging(quiet)
    _quiet_datasets(quiet)
    s = export_run(
        run_dir, fmt, out=out, repo_id=repo_id, private=private, shard_rows=shard_rows,
        quiet=quiet, overwrite=overwrite,
    )  # fmt: skip
    click.echo(
        f"exported {s['kept']} rows to {s['out']} ({s['removed']} removed, "
        f"{s['changed_captions']} captions changed)"
        + (f"; pushed to {s['url']}" if "url" in s else "")
    )


@click.command(name="steps")
def list_steps():
    """List the recipe steps and their settings (the keys a recipe step takes).

    \b
    Example:
      curate steps
    """
    import dataclasses

    from curate.registry import get_steps

    for name, cls in sorted(get_steps().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name}: {doc}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "required"
            click.echo(f"    {f.name} = {default!r}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@curate_errors
def info(run_dir):
    """Show a run folder: source, columns, steps run, and kept/removed counts.

    \b
    Example:
      curate info runs/demo
    """
    from curate.io.folders import require_run_dir
    from curate.io.ingest import read_ingest_summary
    from curate.table import read_table, removal_counts, removal_frame

    require_run_dir(run_dir)
    table = read_table(run_dir)
    summary = read_ingest_summary(run_dir) or {}
    rem = removal_frame(table)
    click.echo(f"run folder: {run_dir}")
    if summary:
        click.echo(
            f"source: {summary['config']['name']} ({summary['source']['kind']}, split {summary['config']['split']})"
        )
    click.echo(
        f"rows: {table.height} = {int(rem['keep'].sum())} kept + {int((~rem['keep']).sum())} removed"
    )
    for by, why, n in removal_counts(table).iter_rows():
        click.echo(f"  {n:6d}  {by}: {why}")
    echo_notes(summary)
    click.echo("columns:")
    for name, dtype in table.schema.items():
        click.echo(f"  {name}: {dtype}")
    steps = sorted((run_dir / "steps").glob("*/done.json")) if (run_dir / "steps").exists() else []
    if steps:
        click.echo("steps: " + ", ".join(p.parent.name for p in steps))


def safe_folder_name(name: str) -> str:
    """A recipe name as one folder name: no separators, no ``..``, nothing hidden."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "recipe"
    return safe[:100]


def _quiet_datasets(quiet: bool) -> None:
    if quiet:
        import datasets

        datasets.disable_progress_bars()


COMMANDS = [ingest, clean, merge, export, info, list_steps]
